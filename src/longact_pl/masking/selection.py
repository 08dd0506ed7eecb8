"""Mask selection (pure): selectors chosen by Hydra ``_target_`` and per-matrix / global unit selection.

A selector picks ``k`` unit indices out of ``n`` given their scores. ``TopK`` is LongAct (keep the most
salient units), ``BottomK`` the inverse control, ``RandomK`` the random control (ignores scores; seeded).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Protocol

import torch
from torch import Tensor

from longact_pl.masking.units import count_k

SCOPES = ("per_matrix", "global")


class Selector(Protocol):
    """Picks ``k`` unit indices from unit scores."""

    def __call__(self, scores: Tensor, k: int, generator: torch.Generator) -> Tensor:
        """Return ``k`` distinct indices into ``scores`` (``[n]`` -> ``[k]`` long)."""
        ...


def _descending(scores: Tensor) -> Tensor:
    """Sort indices by decreasing score; ties keep the lower index first (stable, deterministic)."""
    return torch.argsort(scores.float().cpu(), descending=True, stable=True)  # [n]


class TopK:
    """LongAct: keep the ``k`` highest-scoring units."""

    seeded = False  # the seed plays no part

    def __call__(self, scores: Tensor, k: int, generator: torch.Generator) -> Tensor:
        """Return the indices of the ``k`` largest scores."""
        return _descending(scores)[:k]  # [k]


class BottomK:
    """Inverse control: keep the ``k`` lowest-scoring units.

    It takes the tail of the same stable order :class:`TopK` uses, so the two are disjoint whenever
    ``2k <= n`` (e.g. ``ratio <= 0.5`` with an even unit count), ties included.
    """

    seeded = False

    def __call__(self, scores: Tensor, k: int, generator: torch.Generator) -> Tensor:
        """Return the indices of the ``k`` smallest scores."""
        return _descending(scores)[scores.numel() - k :]  # [k]


class RandomK:
    """Random control: ``k`` units uniformly at random (scores are ignored; only their count matters)."""

    seeded = True

    def __call__(self, scores: Tensor, k: int, generator: torch.Generator) -> Tensor:
        """``k`` distinct random indices drawn with ``generator``."""
        return torch.randperm(scores.numel(), generator=generator)[:k]  # [k]


def name_generator(seed: int, name: str) -> torch.Generator:
    """Make a CPU generator seeded from ``seed`` and a stable hash of ``name``.

    Random masks thus depend only on (seed, matrix or group name): the same seed gives the same mask, and a
    refresh does not reshuffle a random control.
    """
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63))


def check_scope(scope: str) -> str:
    """Validate a scope name.

    Raises:
        ValueError: If ``scope`` is not one of :data:`SCOPES`.
    """
    if scope not in SCOPES:
        raise ValueError(f"masking.scope={scope!r} is not supported; use one of {list(SCOPES)}")
    return scope


def select_units(
    scores: Mapping[str, Tensor],
    groups: Mapping[str, Sequence[str]],
    selector: Selector,
    ratio: float,
    scope: str = "per_matrix",
    seed: int = 0,
) -> dict[str, Tensor]:
    """Pick units from unit scores.

    Args:
        scores: Name -> unit scores.  # [n_units] each
        groups: Group name -> names; ``scope=global`` ranks all units of a group together.
        selector: Picks unit indices (:class:`TopK`, :class:`BottomK`, :class:`RandomK`).
        ratio: Kept fraction of units; ``k`` is :func:`~longact_pl.masking.units.count_k` of the unit
            count of a name (``per_matrix``) or of the whole group (``global``).
        scope: ``per_matrix`` (same share kept everywhere) or ``global`` (a group's names compete).
        seed: Seed for selectors that draw random numbers (per name, or per group with ``global``).

    Returns:
        Name -> bool unit mask (True = kept), on CPU.  # [n_units] each
    """
    check_scope(scope)
    keep: dict[str, Tensor] = {}
    for group, names in groups.items():
        units = [scores[n].detach().float().cpu() for n in names]
        if scope == "per_matrix":
            for name, u in zip(names, units):
                keep[name] = torch.zeros(u.numel(), dtype=torch.bool)  # [n_units]
                keep[name][selector(u, count_k(ratio, u.numel()), name_generator(seed, name))] = True
            continue
        flat = torch.cat(units)  # [sum n_units]
        chosen = torch.zeros(flat.numel(), dtype=torch.bool)  # [sum n_units]
        chosen[selector(flat, count_k(ratio, flat.numel()), name_generator(seed, group))] = True
        keep.update(zip(names, chosen.split([u.numel() for u in units])))
    return keep
