"""Training order that survives a mid-epoch resume: a seeded permutation per epoch, minus what was done."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import Sampler


class ResumableOrder(Sampler[int]):
    """Indices of epoch ``e`` in the order ``randperm(n, seed + e)``, skipping batches already trained on.

    ``position()`` returns ``(epoch, batches_done)``; after a resume from a mid-epoch checkpoint it reports
    how many batches of the epoch were completed, so the run continues with exactly the batches an
    uninterrupted run would have seen next.

    Args:
        n: Dataset size.
        batch_size: Prompts per batch.
        seed: Base seed of the permutations.
        position: Callable giving ``(epoch, batches_done)`` at the moment iteration starts.
    """

    def __init__(self, n: int, batch_size: int, seed: int, position: Callable[[], tuple[int, int]]) -> None:
        self.n, self.batch_size, self.seed, self.position = n, batch_size, seed, position

    def __iter__(self) -> Iterator[int]:
        epoch, done = self.position()
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        return iter(perm[done * self.batch_size :])

    def __len__(self) -> int:
        return self.n
