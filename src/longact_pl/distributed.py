"""The few collectives the RL step needs, behind one small interface (no Lightning in the callers).

Sampling (dynamic-sampling rounds), the non-finite guard (skip a step on every rank), the learner
(global sequence/token counts, world-size scaling of the loss, how many micro-batches and forwards each
rank runs) and validation's per-prompt records agree across data-parallel ranks through a
:class:`DistOps`. :class:`LocalOps` is the single-process case (and the fake in tests);
:class:`StrategyOps` runs the collectives through a Lightning strategy (DDP or FSDP2).

Every method is a collective when ``world_size > 1``: every rank must call it, in the same order.

With sequence parallelism (``LongActFSDP(sequence_parallel_size=N)``) the N ranks of a group hold the same
rollouts: :meth:`DistOps.share` gives every rank its group's first rank's value, and :meth:`DistOps.sum`
counts each group once (a data-parallel sum).
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import torch

from longact_pl.ops.sequence_parallel.comm import SPGroup, from_first_rank

T = TypeVar("T")


class DistOps(Protocol):
    """Data-parallel collectives: count, sum, min, max, gather of objects, sharing in a sequence group.

    Attributes:
        world_size: Ranks that gradients are averaged over.
        sequence_parallel: The sequence-parallel group whose ranks split every sequence of this rank's
            rollouts (``None``: off); the log-prob passes run split over it.
    """

    world_size: int
    sequence_parallel: SPGroup | None

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Elementwise sum of ``tensor`` over data-parallel ranks (same shape and device as the input)."""
        ...

    def min(self, value: int) -> int:
        """Minimum of an int over ranks."""
        ...

    def max(self, tensor: torch.Tensor) -> torch.Tensor:
        """Elementwise maximum of ``tensor`` over ranks (same shape and device as the input)."""
        ...

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        ...

    def share(self, value: T) -> T:
        """``value`` as the first rank of this rank's sequence-parallel group holds it.

        Without sequence parallelism: ``value`` itself.
        """
        ...


class LocalOps:
    """One process: sums and minima are the values themselves."""

    world_size = 1
    sequence_parallel = None

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor itself."""
        return tensor

    def min(self, value: int) -> int:
        """The value itself."""
        return value

    def max(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor itself."""
        return tensor

    def gather(self, obj: Any) -> list[Any]:
        """``[obj]``."""
        return [obj]

    def share(self, value: T) -> T:
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
        """Ranks that gradients are averaged over (1 on a single device, as ``Trainer.world_size``)."""
        return getattr(self.strategy, "world_size", 1)

    @property
    def sequence_parallel(self) -> SPGroup | None:
        """The strategy's sequence-parallel group (``LongActFSDP``; ``None`` for other strategies or off)."""
        return getattr(self.strategy, "sequence_parallel", None)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over data-parallel ranks, computed on the strategy's device and returned on the input's device.

        The ranks of a sequence-parallel group hold the same values (one rollout batch), so the sum over
        every rank divided by the group size counts each group once, exactly for integer counts.
        """
        if self.world_size == 1:
            return tensor
        # a copy: Lightning's reduce works in place, and .to() of a tensor already there is the tensor itself
        total = self.strategy.reduce(tensor.to(self.strategy.root_device, copy=True), reduce_op="sum")
        sp = self.sequence_parallel
        return (total / sp.size if sp is not None else total).to(tensor.device)

    def min(self, value: int) -> int:
        """Minimum over ranks."""
        if self.world_size == 1:
            return value
        return int(
            self.strategy.reduce(torch.tensor(value, device=self.strategy.root_device), reduce_op="min")
        )

    def max(self, tensor: torch.Tensor) -> torch.Tensor:
        """Elementwise maximum over ranks, computed on the strategy's device, returned on the input's."""
        if self.world_size == 1:
            return tensor
        mine = tensor.to(self.strategy.root_device, copy=True)  # reduced in place: the caller's stays its own
        return self.strategy.reduce(mine, reduce_op="max").to(tensor.device)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` in rank order (``torch.distributed.all_gather_object``: small objects)."""
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def share(self, value: T) -> T:
        """The sequence-parallel group's first rank's ``value``, tensors on this rank's device."""
        sp = self.sequence_parallel
        return value if sp is None else from_first_rank(value, sp, self.strategy.root_device)


def data_parallel_rank(trainer) -> tuple[int, int]:
    """``(rank, number of ranks)`` among data-parallel ranks (a sequence-parallel group shares one).

    From the strategy's sampler arguments (the ``data_parallel`` mesh dimension under ``LongActFSDP``);
    ``(global_rank, world_size)`` for strategies without them.
    """
    kwargs = getattr(trainer.strategy, "distributed_sampler_kwargs", None) or {}
    return int(kwargs.get("rank", trainer.global_rank)), int(kwargs.get("num_replicas", trainer.world_size))
