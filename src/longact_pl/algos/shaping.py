"""Reward shaping (pure functions)."""

from __future__ import annotations

import torch


def overlong_penalty(lengths: torch.Tensor, max_len: int, cache_len: int) -> torch.Tensor:
    """DAPO soft overlong punishment.

    0 for ``L <= max_len - cache_len``; ``((max_len - cache_len) - L) / cache_len`` inside the
    cache window (linear from 0 to -1); -1 for ``L >= max_len``.

    Args:
        lengths: ``[N]`` completion lengths in tokens.
        max_len: Generation budget.
        cache_len: Width of the soft-penalty window before ``max_len`` (``1 <= cache_len <= max_len``).

    Returns:
        ``[N]`` float penalties in ``[-1, 0]``.

    Raises:
        ValueError: If ``cache_len`` is outside ``[1, max_len]``.
    """
    if not 1 <= cache_len <= max_len:
        raise ValueError(f"cache_len must be in [1, max_len={max_len}], got {cache_len}")
    start = max_len - cache_len
    lengths = lengths if lengths.is_floating_point() else lengths.float()  # [N]
    return ((start - lengths) / cache_len).clamp(min=-1.0, max=0.0)  # [N]
