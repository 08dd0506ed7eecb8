"""How one rollout batch is cut into mini-batches (optimizer steps) and micro-batches (forward/backward).

Rows ``g*G .. g*G + G - 1`` of a rollout batch share a prompt. The shared-prefix log-prob pass computes a
prompt once per run of adjacent rows sharing it, so with ``whole_groups`` the shuffle permutes groups (rows
stay together and in order) and micro-batches hold whole groups.
"""

from __future__ import annotations

import torch


def minibatch_indices(
    num_rows: int, mini_batch_size: int, group_size: int, generator: torch.Generator, whole_groups: bool
) -> list[torch.Tensor]:
    """Row indices of one pass's mini-batches.

    Args:
        num_rows: N, rows of the rollout batch.
        mini_batch_size: Rows per mini-batch (``>= N``: one mini-batch, rows in order).
        group_size: G.
        generator: Source of the shuffle.
        whole_groups: Shuffle groups instead of rows (when N and the mini-batch size are multiples of G).

    Returns:
        Index tensors ``[mini]`` (the last may be shorter) covering ``0 .. N - 1`` once.
    """
    if mini_batch_size >= num_rows:
        return [torch.arange(num_rows)]  # [N]
    if whole_groups and num_rows % group_size == 0 and mini_batch_size % group_size == 0:
        groups = torch.randperm(num_rows // group_size, generator=generator)  # [N / G]
        order = (groups[:, None] * group_size + torch.arange(group_size)).flatten()  # [N]
    else:
        order = torch.randperm(num_rows, generator=generator)  # [N]
    return list(order.split(mini_batch_size))


def micro_batch_rows(micro_batch_size: int, group_size: int, whole_groups: bool) -> int:
    """Rows per forward/backward: with ``whole_groups`` and at least G rows, rounded down to whole groups.

    Rounding down keeps peak memory within what ``micro_batch_size`` allows; below G rows no prompt is
    shared within a micro-batch anyway.
    """
    if whole_groups and micro_batch_size >= group_size:
        return micro_batch_size // group_size * group_size
    return micro_batch_size
