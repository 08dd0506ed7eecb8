"""The few collectives the RL step needs, behind one small interface (no Lightning in the callers).

Sampling (dynamic-sampling rounds), the non-finite guard (skip a step on every rank) and the learner
(global sequence/token counts, world-size scaling of the loss) agree across data-parallel ranks through a
:class:`DistOps`. :class:`LocalOps` is the single-process case (and the fake in tests);
:class:`StrategyOps` runs the collectives through a Lightning strategy (DDP or FSDP2).

Every method is a collective when ``world_size > 1``: every rank must call it, in the same order.
"""

from __future__ import annotations

from typing import Protocol

import torch


class DistOps(Protocol):
    """Data-parallel collectives: the ranks' count, a sum and a minimum."""

    world_size: int

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Elementwise sum of ``tensor`` over ranks (same shape and device as the input)."""
        ...

    def min(self, value: int) -> int:
        """Minimum of an int over ranks."""
        ...


class LocalOps:
    """One process: sums and minima are the values themselves."""

    world_size = 1

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor itself."""
        return tensor

    def min(self, value: int) -> int:
        """The value itself."""
        return value


class StrategyOps:
    """Collectives through a Lightning strategy (``trainer.strategy``); none run on a single process.

    Args:
        strategy: The trainer's strategy (``reduce``, ``world_size``, ``root_device``).
    """

    def __init__(self, strategy) -> None:
        self.strategy = strategy

    @property
    def world_size(self) -> int:
        """Data-parallel ranks (1 for single-device strategies, as ``Trainer.world_size``)."""
        return getattr(self.strategy, "world_size", 1)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, computed on the strategy's device and returned on the input's device."""
        if self.world_size == 1:
            return tensor
        total = self.strategy.reduce(tensor.to(self.strategy.root_device), reduce_op="sum")
        return total.to(tensor.device)

    def min(self, value: int) -> int:
        """Minimum over ranks."""
        if self.world_size == 1:
            return value
        return int(
            self.strategy.reduce(torch.tensor(value, device=self.strategy.root_device), reduce_op="min")
        )
