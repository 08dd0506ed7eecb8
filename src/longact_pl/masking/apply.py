"""Exact row masking at the optimizer step.

Why snapshot + restore instead of only zeroing gradients: a zero gradient does not keep a row still under
AdamW (decoupled weight decay shrinks it, and the first/second moments left from earlier steps keep moving
it), nor under SGD with momentum. So, for any ``torch.optim.Optimizer``:

1. ``mask_grads()`` zeroes the gradient rows of frozen rows. The callback calls it in
   ``on_before_optimizer_step``, which Lightning runs before the module's own ``on_before_optimizer_step``
   (where gradient clipping happens), so the clip norm sees the masked gradient.
2. A step **pre-hook** on the torch optimizer copies the frozen rows (``index_select`` into preallocated
   buffers), and a step **post-hook** writes them back (``index_copy_``). The rows are therefore
   bit-identical after every step whatever the optimizer does, including rows that left the mask at a
   refresh while they still carried momentum.

Optimizer state of frozen rows is left alone here: their Adam moments decay (``exp_avg *= beta1``,
``exp_avg_sq *= beta2`` each step, the gradient being zero). A row that enters the mask at a refresh gets at
least the second moment of the rows that stayed (``masking/moments.py``): Adam's bias correction uses the
global step count, so zero or long-decayed moments would give it an oversized first update.

Cost per step: one gather and one scatter of the frozen rows of the target weights (index tensors and
buffers are built once per mask), nothing for the rest of the model.

Sharded weights (FSDP2 ``DTensor``, ``Shard(0)``): each rank snapshots, restores and masks only the frozen
rows inside its own contiguous row block (``masking/sharding.py``), on the local tensors; together the
ranks cover every frozen row exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from longact_pl.masking.sharding import local_rows


@dataclass
class _FrozenRows:
    """Frozen rows of one parameter (a target weight or bias) inside this rank's row block."""

    param: nn.Parameter
    index: Tensor  # [n_frozen] long, local row indices, on the parameter's device
    buffer: Tensor  # [n_frozen, ...] snapshot, same dtype/device as the parameter


class RowFreezer:
    """Keeps the rows outside the masks of target ``nn.Linear`` modules fixed through optimizer steps."""

    def __init__(self) -> None:
        self._frozen: list[_FrozenRows] = []
        self._handles: list[RemovableHandle] = []

    def set_masks(self, linears: Mapping[str, nn.Linear], masks: Mapping[str, Tensor]) -> None:
        """Precompute the frozen-row indices and snapshot buffers for new masks.

        Args:
            linears: Module name -> target projection.
            masks: Module name -> bool row mask (True = trained).  # [rows] each

        Raises:
            ValueError: If a mask length differs from the module's ``out_features``.
        """
        frozen: list[_FrozenRows] = []
        for name, linear in linears.items():
            mask = masks[name]
            if mask.numel() != linear.out_features:
                raise ValueError(f"mask for {name} has {mask.numel()} rows, module has {linear.out_features}")
            for param in (linear.weight, linear.bias):
                if param is None:
                    continue
                local, offset = local_rows(param.detach())  # [rows_local, ...], first global row
                index = (~mask.cpu()).nonzero().flatten()  # [n_frozen] global rows
                index = index[(index >= offset) & (index < offset + local.shape[0])] - offset  # local rows
                if index.numel() == 0:
                    continue
                buffer = torch.empty(
                    (index.numel(), *local.shape[1:]), dtype=local.dtype, device=local.device
                )
                frozen.append(_FrozenRows(param, index.to(local.device), buffer))
        self._frozen = frozen

    @property
    def frozen_rows(self) -> int:
        """Number of frozen weight/bias rows across all target parameters (this rank's rows when sharded)."""
        return sum(f.index.numel() for f in self._frozen)

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Zero the gradients of frozen rows (in place; parameters without a gradient are skipped)."""
        for f in self._frozen:
            if f.param.grad is not None:
                local_rows(f.param.grad)[0].index_fill_(0, f.index, 0)

    @torch.no_grad()
    def snapshot(self) -> None:
        """Copy the frozen rows into the buffers."""
        for f in self._frozen:
            torch.index_select(local_rows(f.param.detach())[0], 0, f.index, out=f.buffer)  # [n_frozen, in]

    @torch.no_grad()
    def restore(self) -> None:
        """Write the buffered rows back into the parameters."""
        for f in self._frozen:
            local_rows(f.param.detach())[0].index_copy_(0, f.index, f.buffer)

    def attach(self, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        """Register step pre/post hooks (snapshot/restore) on every torch optimizer given.

        Args:
            optimizers: The *torch* optimizers (``trainer.optimizers``), not Lightning's wrappers.
        """
        self.detach()
        for opt in optimizers:
            self._handles.append(opt.register_step_pre_hook(lambda *_: self.snapshot()))
            self._handles.append(opt.register_step_post_hook(lambda *_: self.restore()))

    def detach(self) -> None:
        """Remove the optimizer hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
