"""LongAct's part of every optimizer step: the learner hook that masks the gradient and gates statistics.

``SaliencyMask`` registers one :class:`MaskingStepHook` with the module's learner in its ``setup``
(:class:`~longact_pl.learner_hooks.LearnerHook`). The learner then

* tells it the real-token mask of each training forward (``on_forward``), the gate its statistics
  collector reads (refresh statistics and activation telemetry count only real tokens, each once);
* lets it zero the frozen rows of the accumulated gradient once per optimizer step (``transform_grads``),
  before the non-finite guard and the gradient norm look at it, and before Lightning's optimizer step runs
  the module's clipping: every later reader sees the gradient that is applied;
* tells it when the step ran (``after_step``): only then does the step's gradient telemetry count.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from longact_pl.masking.apply import RowFreezer
from longact_pl.masking.telemetry import GradShare


class MaskingStepHook:
    """Masks the gradient rows outside LongAct's mask and measures the kept share (a ``LearnerHook``).

    Args:
        freezer: Holds the masks (set by the callback at calibration and refresh) and zeroes frozen rows.
        telemetry: Measure the gradient's kept share before masking (``mask/grad_share_kept`` etc.).

    Attributes:
        token_mask: The real-token mask ``[b, t]`` of the training forward running now (``None`` between
            them): the statistics collector's gate.
        grad: Squared gradient norms of the steps taken since the last ``grad.take()``.
        targets: The target projections' trained parameters (the kept/total share is over these).
        everything: Every trained parameter of the policy (the whole update's share).
    """

    def __init__(self, freezer: RowFreezer, telemetry: bool) -> None:
        self.freezer, self.telemetry = freezer, telemetry
        self.token_mask: torch.Tensor | None = None
        self.grad = GradShare()
        self.targets: list[nn.Parameter] = []
        self.everything: list[nn.Parameter] = []

    def on_forward(self, token_mask: torch.Tensor | None) -> None:
        """Open (a mask) or close (``None``) the statistics gate around a training forward."""
        self.token_mask = token_mask

    def transform_grads(self, params: Sequence[nn.Parameter]) -> None:
        """Zero frozen gradient rows; with telemetry, measure the kept share of the gradient first."""
        if not self.telemetry:
            self.freezer.mask_grads()
            return
        trained = [p for p in self.targets if p.requires_grad]
        self.grad.measure(trained, self.freezer.mask_grads, self.everything)

    def after_step(self) -> None:
        """The masked step ran: its telemetry counts."""
        self.grad.commit()
