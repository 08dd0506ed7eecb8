"""Selection units: how channel scores are grouped before ranking, and how kept units expand to rows.

Each unit kind is a function ``rows, head_dim, pairs -> unit index of every row``; a unit mask expands back to
rows by indexing with the same map. Channel scores are summed per unit (``index_add``) for ``head``;
``rope_pair`` units are scored directly from the pair's per-token magnitude (``masking/stats.py``).

``channel``: every output channel (weight row) is its own unit.
``rope_pair``: the two channels of each head that RoPE rotates together form one unit; ``pairs`` is the
head-local layout read from the model (``masking/rope.py``): ``d`` with ``d + head_dim/2`` for rotate-half
models (the default when no layout is given), ``2i`` with ``2i + 1`` for interleaved ones, and a unit per
pass-through channel of a partial rotary.
``head``: all ``head_dim`` channels of a head form one unit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


def _heads(rows: int, head_dim: int) -> int:
    """Heads in a projection with ``rows`` outputs; errors clearly when rows do not split into heads."""
    if head_dim < 1 or rows % head_dim:
        raise ValueError(
            f"masking.unit=rope_pair/head needs out_features ({rows}) to be a multiple of "
            f"head_dim ({head_dim}); use masking.unit=channel for non-attention targets"
        )
    return rows // head_dim


def _channel_index(rows: int, head_dim: int, pairs: Tensor | None = None) -> Tensor:
    """Row ``r`` is unit ``r``."""
    return torch.arange(rows)  # [rows]


def half_pairs(head_dim: int) -> Tensor:
    """Rotate-half layout: channel ``d`` of a head is in pair ``d mod D/2`` (``D`` = head_dim, even)."""
    if head_dim % 2:
        raise ValueError(f"masking.unit=rope_pair needs an even head_dim, got {head_dim}")
    return torch.arange(head_dim) % (head_dim // 2)  # [D]


def _rope_pair_index(rows: int, head_dim: int, pairs: Tensor | None = None) -> Tensor:
    """Row ``h*D + d`` is unit ``h*U + pairs[d]`` (``U`` = pairs per head; default layout: rotate-half)."""
    _heads(rows, head_dim)
    pairs = half_pairs(head_dim) if pairs is None else pairs.cpu().long()  # [D]
    if pairs.numel() != head_dim:
        raise ValueError(f"RoPE layout has {pairs.numel()} channels, head_dim is {head_dim}")
    r = torch.arange(rows)  # [rows]
    return (r // head_dim) * (int(pairs.max()) + 1) + pairs[r % head_dim]  # [rows]


def _head_index(rows: int, head_dim: int, pairs: Tensor | None = None) -> Tensor:
    """Row ``h*D + d`` is unit ``h``."""
    _heads(rows, head_dim)
    return torch.arange(rows) // head_dim  # [rows]


UNITS: dict[str, Callable[[int, int, Tensor | None], Tensor]] = {
    "channel": _channel_index,
    "rope_pair": _rope_pair_index,
    "head": _head_index,
}


def check_unit(unit: str) -> str:
    """Validate a unit name.

    Raises:
        ValueError: If ``unit`` is not a key of :data:`UNITS`.
    """
    if unit not in UNITS:
        raise ValueError(f"masking.unit={unit!r} is not supported; use one of {list(UNITS)}")
    return unit


def unit_index(unit: str, rows: int, head_dim: int, pairs: Tensor | None = None) -> Tensor:
    """Map every row of a projection to its unit.

    Args:
        unit: A key of :data:`UNITS`.
        rows: Output channels of the projection.
        head_dim: Channels per head.
        pairs: Head-local RoPE layout for ``rope_pair`` (``masking/rope.py``; default rotate-half).  # [D]

    Returns:
        Long tensor mapping row -> unit, values in ``[0, n_units)``, head-major.  # [rows]
    """
    return UNITS[check_unit(unit)](rows, head_dim, pairs)


def unit_scores(channel: Tensor, index: Tensor) -> Tensor:
    """Sum channel scores into unit scores.

    Args:
        channel: Per-channel scores.  # [rows]
        index: Row -> unit map from :func:`unit_index`.  # [rows]

    Returns:
        Unit scores.  # [n_units]
    """
    n_units = int(index.max()) + 1
    out = torch.zeros(n_units, dtype=channel.dtype, device=channel.device)  # [n_units]
    return out.index_add_(0, index.to(channel.device), channel)  # [n_units]


def expand_units(keep: Tensor, index: Tensor) -> Tensor:
    """Expand a unit mask to a row mask.

    Args:
        keep: Bool mask over units.  # [n_units]
        index: Row -> unit map from :func:`unit_index`.  # [rows]

    Returns:
        Bool mask over weight rows.  # [rows]
    """
    return keep[index.to(keep.device)]  # [rows]


def count_k(ratio: float, n_units: int) -> int:
    """Units to keep: ``k = max(1, round_half_up(ratio * n_units))``, at most ``n_units``.

    Round-half-up (not Python's banker's rounding): ``0.5 * 5 = 2.5 -> 3``, ``0.3 * 32 = 9.6 -> 10``,
    ``0.3 * 64 = 19.2 -> 19``. With ``scope=global`` it is applied once to all units of a target name.

    Args:
        ratio: Kept fraction in ``(0, 1]``.
        n_units: Units available.

    Raises:
        ValueError: If ``ratio`` is outside ``(0, 1]`` or ``n_units < 1``.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"masking.ratio={ratio} must be in (0, 1]")
    if n_units < 1:
        raise ValueError(f"cannot select from {n_units} units")
    return min(n_units, max(1, math.floor(ratio * n_units + 0.5)))
