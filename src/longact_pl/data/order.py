"""Training order that survives a mid-epoch resume: a seeded permutation per epoch, minus what was done."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import Sampler


class ResumableOrder(Sampler[int]):
    """Indices of epoch ``e`` in the order ``randperm(n, seed + e)``, skipping batches already trained on.

    ``position()`` returns ``(epoch, batches_done, rank, world_size)``; after a resume from a mid-epoch
    checkpoint it reports how many batches of the epoch were completed, so the run continues with exactly
    the batches an uninterrupted run would have seen next. Under data parallelism rank ``r`` takes every
    ``world_size``-th index of the global order (so the ranks' batches together form the single-process
    batch); the trainer must then not wrap this sampler (``use_distributed_sampler: false``).

    Args:
        n: Dataset size.
        batch_size: Prompts per batch (per rank).
        seed: Base seed of the permutations.
        position: Callable giving ``(epoch, batches_done, rank, world_size)`` when iteration starts.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, position: Callable[[], tuple[int, int, int, int]]
    ) -> None:
        self.n, self.batch_size, self.seed, self.position = n, batch_size, seed, position

    def __iter__(self) -> Iterator[int]:
        epoch, done, rank, world = self.position()
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        usable = self.n - self.n % world  # every rank gets the same number of samples
        return iter(perm[done * self.batch_size * world : usable][rank::world])

    def __len__(self) -> int:
        _, _, _, world = self.position()
        return self.n // world
