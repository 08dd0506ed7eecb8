"""Per-step LongAct telemetry: how much of the Q/K gradient and of the activation mass the kept rows carry.

* ``mask/grad_share_kept``: the share of the target gradients' squared norm that falls in kept rows, before
  masking, summed over the optimizer steps of a training step. A random mask keeps about ``ratio`` of it, so
  the gap to ``ratio`` says how much gradient the saliency mask concentrates on.
* ``mask/act_l1_share_kept``: the share of the targets' activation L1 mass (the measured activations, over the
  batch's valid tokens) that falls in kept channels, on the current batch (the calibration-time value is
  ``l1_share`` in ``mask_summary.json``).

Both cost one pass over the targets' gradients (two ``_foreach_norm`` calls over ``|W_Q| + |W_K|`` numbers)
and a sum over channels per target, and are exact under FSDP2: the sums are taken over each rank's local rows
and added over ranks once per training step.
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
    """Kept and total squared gradient norms of the targets, summed over the steps of a training step."""

    def __init__(self) -> None:
        self._pending: tuple[Tensor, Tensor] | None = None
        self._sums = torch.zeros(2)  # [kept, total]
        self._masks: tuple[Mapping[str, Tensor], dict[str, Tensor]] | None = None  # (masks, on device)

    def measure(self, params: list[nn.Parameter], mask: Callable[[], None]) -> None:
        """Run ``mask`` (zeroes frozen rows), measuring the squared norms before and after it."""
        total = local_sq_norm(params)
        mask()
        self._pending = (local_sq_norm(params), total)

    def commit(self) -> None:
        """Count the last measurement (its optimizer step is running)."""
        if self._pending is not None:
            kept, total = self._pending
            sums = torch.stack([kept.detach(), total.detach()])  # [2], on the gradients' device: no sync
            self._sums = self._sums.to(sums.device) + sums
            self._pending = None

    def take(self) -> Tensor:
        """Return ``[kept, total]`` summed since the last call (on the gradients' device), and reset."""
        sums, self._sums = self._sums, torch.zeros(2)
        return sums  # [2]

    def step_sums(self, stats: Mapping[str, ChannelStats], masks: Mapping[str, Tensor], device) -> Tensor:
        """``[grad kept, grad total, activation kept, activation total]`` of one training step, on ``device``.

        Args:
            stats: Target name -> the step's activation statistics.
            masks: Target name -> row mask (copied to ``device`` once per new masks dict).
            device: The module's device.
        """
        if self._masks is None or self._masks[0] is not masks:
            self._masks = (masks, {k: m.to(device) for k, m in masks.items()})
        act = act_l1_mass(stats, self._masks[1], device)  # [2]
        return torch.cat([self.take().to(device), act.to(device)])  # [4]


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
    """Turn ``[grad kept, grad total, act kept, act total]`` into the logged shares (skipping empty ones)."""
    out = {}
    for key, (kept, total) in (("grad_share_kept", sums[:2]), ("act_l1_share_kept", sums[2:])):
        if float(total) > 0 or not torch.isfinite(total):
            out[f"mask/{key}"] = float(kept / total)
    return out
