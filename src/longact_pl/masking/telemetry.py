"""Per-step LongAct telemetry: how much of the Q/K gradient and of the activation mass the kept rows carry.

* ``mask/grad_share_kept``: the share of the target gradients' squared norm that falls in kept rows, before
  masking, summed over the optimizer steps of a training step. A random mask keeps about ``ratio`` of it, so
  the gap to ``ratio`` says how much gradient the saliency mask concentrates on.
* ``mask/update_share_removed``: the share of the whole model's update (the squared gradient norm over every
  trained parameter, before masking) that the mask removes (the targets' frozen rows). This is the size of
  the intervention: on SmolLM2 the Q/K weights are ~10% of the parameters, so even a mask that keeps most of
  the Q/K gradient removes only a few percent of the whole update.
* ``mask/act_l1_share_kept``: the share of the targets' activation L1 mass (the measured activations, over the
  batch's valid tokens) that falls in kept channels, on the current batch (the calibration-time value is
  ``l1_share`` in ``mask_summary.json``).

They cost one pass over the targets' gradients (two ``_foreach_norm`` calls over ``|W_Q| + |W_K|`` numbers),
one over all gradients, and a sum over channels per target, and are global under DDP and FSDP2: every sum
is taken over each rank's local rows and the sums are added over ranks once per training step (replicated
DDP gradients scale every sum by the world size alike, so the shares are the one-process values).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from longact_pl.masking.sharding import local_rows
from longact_pl.masking.stats import ChannelStats


def local_sq_norm(params: Iterable[nn.Parameter]) -> Tensor:
    """Squared L2 norm of the gradients of ``params`` held by this rank (0 without gradients)."""
    grads = [local_rows(p.grad)[0] for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.stack([n.float() for n in torch._foreach_norm(grads)]).square().sum()


class GradShare:
    """Squared gradient norms (targets kept, targets total, whole model) summed over a training step."""

    def __init__(self) -> None:
        self._pending: tuple[Tensor, Tensor, Tensor] | None = None
        self._sums = torch.zeros(3)  # [kept, total, whole model]
        self._masks: tuple[Mapping[str, Tensor], dict[str, Tensor]] | None = None  # (masks, on device)

    def measure(
        self, params: list[nn.Parameter], mask: Callable[[], None], everything: Iterable[nn.Parameter] = ()
    ) -> None:
        """Run ``mask`` (zeroes frozen rows), measuring the squared norms before and after it.

        Args:
            params: The target parameters.
            mask: Zeroes the frozen rows' gradients.
            everything: Every trained parameter of the model (the whole update; empty: not measured).
        """
        total = local_sq_norm(params)
        whole = local_sq_norm(everything)
        mask()
        self._pending = (local_sq_norm(params), total, whole.to(total.device))

    def commit(self) -> None:
        """Count the last measurement (its optimizer step is running)."""
        if self._pending is not None:
            kept, total, whole = self._pending
            sums = torch.stack([kept.detach(), total.detach(), whole.detach()])  # [3], gradients' device
            self._sums = self._sums.to(sums.device) + sums
            self._pending = None

    def take(self) -> Tensor:
        """Return ``[kept, total, whole model]`` summed since the last call (gradients' device), and reset."""
        sums, self._sums = self._sums, torch.zeros(3)
        return sums  # [3]

    def step_sums(self, stats: Mapping[str, ChannelStats], masks: Mapping[str, Tensor], device) -> Tensor:
        """``[grad kept, grad total, whole model, act kept, act total]`` of one training step, on ``device``.

        Args:
            stats: Target name -> the step's activation statistics.
            masks: Target name -> row mask (copied to ``device`` once per new masks dict).
            device: The module's device.
        """
        if self._masks is None or self._masks[0] is not masks:
            self._masks = (masks, {k: m.to(device) for k, m in masks.items()})
        act = act_l1_mass(stats, self._masks[1], device)  # [2]
        return torch.cat([self.take().to(device), act.to(device)])  # [5]


def act_l1_mass(stats: Mapping[str, ChannelStats], masks: Mapping[str, Tensor], device=None) -> Tensor:
    """``[kept, total]`` activation L1 mass over all targets of one batch's statistics.

    Args:
        stats: Target name -> the batch's statistics (their ``l1`` per channel).
        masks: Target name -> row mask, on the statistics' device (no host round trip per target).
        device: Where the result lives when ``stats`` is empty.
    """
    parts = [torch.stack([s.l1[masks[name]].sum(), s.l1.sum()]) for name, s in stats.items()]  # [2] each
    return torch.stack(parts).sum(0) if parts else torch.zeros(2, device=device)  # [2]


def shares(sums: Tensor) -> dict[str, float]:
    """Turn ``[grad kept, grad total, whole model, act kept, act total]`` into the logged shares.

    Empty ones (no gradient yet, no whole-model measurement, no tokens) are skipped.
    """
    kept, total, whole = sums[0], sums[1], sums[2]
    parts = (
        ("grad_share_kept", kept, total),
        ("update_share_removed", total - kept, whole),
        ("act_l1_share_kept", sums[3], sums[4]),
    )
    out = {}
    for key, num, den in parts:
        if float(den) > 0 or not torch.isfinite(den):
            out[f"mask/{key}"] = float(num / den)
    return out
