"""Selection units: how channel scores are grouped before ranking, and how kept units expand to rows.

A unit kind is a class chosen by ``_target_`` (``conf/masking/unit/*.yaml``, ``masking/unit=<file>`` on the
command line) that satisfies :class:`SelectionUnit`: its ``index(rows, head_dim)`` maps every row to its
unit, and a unit mask expands back to rows by indexing with the same map. Channel scores are summed per unit
(``index_add``) unless the unit is ``scored_by_magnitude`` (``rope_pair``: scored directly from the pair's
per-token magnitude, ``masking/stats.py``). A new unit is a class plus a YAML file (``docs/extending.md``).

:class:`Channel`: every output channel (weight row) is its own unit.
:class:`RopePair`: the two channels of each head that RoPE rotates together form one unit; the head-local
layout is read from the model in :meth:`RopePair.bind` (``masking/rope.py``): ``d`` with ``d + head_dim/2``
for rotate-half models (the default when no layout is given), ``2i`` with ``2i + 1`` for interleaved ones, and
a unit per pass-through channel of a partial rotary.
:class:`Head`: all ``head_dim`` channels of a head form one unit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from longact_pl.masking.targets import Target


@runtime_checkable
class SelectionUnit(Protocol):
    """What a mask keeps or drops as a whole (``masking.unit``)."""

    # recorded as masking.unit in mask_summary.json and checkpoints (a resume compares it)
    name: str
    # index() needs the model's head_dim (looked up only then)
    needs_head_dim: bool
    # statistics score each unit by its channels' per-token magnitude instead of summing channel scores
    scored_by_magnitude: bool

    def check(self, measure_at: str) -> None:
        """Refuse a ``masking.measure_at`` this unit cannot be scored at (``ValueError`` naming the fix)."""
        ...

    def bind(self, model: nn.Module, targets: Sequence[Target], head_dim: int) -> SelectionUnit:
        """The unit ready for ``model`` (e.g. with the RoPE layout read from it); called once, cheap."""
        ...

    def index(self, rows: int, head_dim: int) -> Tensor:
        """Map each of a projection's ``rows`` outputs to its unit (long ``[rows]``, values ``< n_units``)."""
        ...


def _heads(rows: int, head_dim: int) -> int:
    """Heads in a projection with ``rows`` outputs; errors clearly when rows do not split into heads."""
    if head_dim < 1 or rows % head_dim:
        raise ValueError(
            f"masking.unit=rope_pair/head needs out_features ({rows}) to be a multiple of "
            f"head_dim ({head_dim}); use masking/unit=channel for non-attention targets"
        )
    return rows // head_dim


def half_pairs(head_dim: int) -> Tensor:
    """Rotate-half layout: channel ``d`` of a head is in pair ``d mod D/2`` (``D`` = head_dim, even)."""
    if head_dim % 2:
        raise ValueError(f"masking.unit=rope_pair needs an even head_dim, got {head_dim}")
    return torch.arange(head_dim) % (head_dim // 2)  # [D]


class Channel:
    """Row ``r`` is unit ``r`` (LongAct's default)."""

    name, needs_head_dim, scored_by_magnitude = "channel", False, False

    def check(self, measure_at: str) -> None:
        """After RoPE a channel's score carries its rotary partner's magnitude: ``post_rope`` is refused."""
        if measure_at == "post_rope":
            raise ValueError(
                "masking.measure_at=post_rope with masking.unit=channel scores each channel after RoPE "
                "has mixed it with its rotary partner (RoPE rotates channels in pairs), so part "
                "of a channel's score is its partner row's magnitude and the wrong row may be kept; use "
                "masking/unit=rope_pair (each pair scored by its rotation-invariant magnitude) or "
                "masking/unit=head, or measure before RoPE with masking.measure_at=proj"
            )

    def bind(self, model: nn.Module, targets: Sequence[Target], head_dim: int) -> Channel:
        """Nothing to read from the model."""
        return self

    def index(self, rows: int, head_dim: int) -> Tensor:
        """See :class:`SelectionUnit`."""
        return torch.arange(rows)  # [rows]


class RopePair:
    """The two channels of a head that RoPE rotates together, scored by their per-token magnitude.

    Args:
        pairs: Head-local layout, channel -> pair id (``masking/rope.py``); ``None`` = rotate-half until
            :meth:`bind` reads the model's.  # [head_dim]
    """

    name, needs_head_dim, scored_by_magnitude = "rope_pair", True, True

    def __init__(self, pairs: Tensor | None = None) -> None:
        self.pairs = None if pairs is None else pairs.cpu().long()  # [D]

    def check(self, measure_at: str) -> None:
        """A pair's magnitude is unchanged by the rotation: every ``measure_at`` is fine."""

    def bind(self, model: nn.Module, targets: Sequence[Target], head_dim: int) -> RopePair:
        """Read the RoPE layout from the attention module of the first query/key target."""
        from longact_pl.masking.rope import rope_pairs

        attention = next((t.attention for t in targets if t.role), targets[0].attention)
        return RopePair(rope_pairs(model, model.get_submodule(attention), head_dim))

    def index(self, rows: int, head_dim: int) -> Tensor:
        """Row ``h*D + d`` is unit ``h*U + pairs[d]`` (``U`` = pairs per head)."""
        _heads(rows, head_dim)
        pairs = half_pairs(head_dim) if self.pairs is None else self.pairs  # [D]
        if pairs.numel() != head_dim:
            raise ValueError(f"RoPE layout has {pairs.numel()} channels, head_dim is {head_dim}")
        r = torch.arange(rows)  # [rows]
        return (r // head_dim) * (int(pairs.max()) + 1) + pairs[r % head_dim]  # [rows]


class Head:
    """All ``head_dim`` channels of a head form one unit (its score: the sum of its channels')."""

    name, needs_head_dim, scored_by_magnitude = "head", True, False

    def check(self, measure_at: str) -> None:
        """A head holds every channel's rotary partner: every ``measure_at`` is fine."""

    def bind(self, model: nn.Module, targets: Sequence[Target], head_dim: int) -> Head:
        """Nothing to read from the model."""
        return self

    def index(self, rows: int, head_dim: int) -> Tensor:
        """Row ``h*D + d`` is unit ``h``."""
        _heads(rows, head_dim)
        return torch.arange(rows) // head_dim  # [rows]


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
