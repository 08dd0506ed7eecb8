"""Masks under data parallelism: local row ranges of FSDP2 shards, and calibration prompts per rank.

Under FSDP2 a weight is a ``DTensor`` placed ``Shard(0)``: each rank holds a contiguous block of rows
(``torch.chunk`` along dim 0, the last ranks possibly fewer or none). A row mask over the full weight maps
to this rank's block by the block's global offset. DDP and single-device weights are ordinary tensors:
the whole weight, offset 0.
"""

from __future__ import annotations

import math

from torch import Tensor
from torch.distributed.tensor import DTensor


def local_rows(t: Tensor) -> tuple[Tensor, int]:
    """The rows of ``t`` held by this rank and the global index of the first one.

    Args:
        t: A parameter or gradient: a plain tensor or a ``DTensor`` sharded on dim 0 (or replicated).

    Returns:
        ``(local, offset)``: ``local`` aliases the storage (in-place writes reach the parameter).

    Raises:
        NotImplementedError: For a ``DTensor`` sharded along another dim (e.g. column tensor parallel).
    """
    if not isinstance(t, DTensor):
        return t, 0
    for placement in t.placements:
        if placement.is_shard() and getattr(placement, "dim", None) != 0:
            raise NotImplementedError(
                f"LongAct row masks need weights sharded on dim 0 (FSDP2); got placements {t.placements}"
            )
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    return t.to_local(), int(offset[0]) if offset else 0


def shard_prompts(prompts: list[list[int]], rank: int, world_size: int) -> tuple[list[list[int]], int]:
    """Split calibration prompts across data-parallel ranks.

    Rank ``r`` takes ``prompts[r::world_size]``; summing the statistics over ranks then equals one process
    running every prompt. With fewer prompts than ranks every rank runs all of them (the summed statistics
    are a multiple of the single-process ones, so means, RMS and maxima are unchanged).

    Returns:
        ``(this rank's prompts, extra uncounted forwards)``: FSDP needs the same number of forwards on every
        rank, so ranks with one prompt fewer run one more forward that is not counted.
    """
    if world_size <= 1 or len(prompts) < world_size:
        return list(prompts), 0
    mine = list(prompts[rank::world_size])
    return mine, math.ceil(len(prompts) / world_size) - len(mine)
