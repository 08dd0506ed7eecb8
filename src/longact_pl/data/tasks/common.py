"""Helpers shared by the synthetic tasks: seeded sub-generators and needle depth resolution."""

from __future__ import annotations

import random
from collections.abc import Sequence


def sub_rng(seed: int, purpose: str) -> random.Random:
    """Return an independent, reproducible generator for one ``purpose`` of one sample seed.

    String seeds are hashed with SHA-512 by :class:`random.Random`, so the stream does not depend on
    ``PYTHONHASHSEED``.
    """
    return random.Random(f"{seed}/{purpose}")


def check_depth(depth: float | Sequence[float] | None, count: int, where: str) -> None:
    """Validate a depth setting for ``count`` inserted units.

    Args:
        depth: ``None`` (random), one fraction in ``[0, 1]``, or one fraction per unit.
        count: Number of units that will be inserted.
        where: Name of the owning class, for the error message.

    Raises:
        ValueError: On a depth outside ``[0, 1]`` or a list of the wrong length.
    """
    if depth is None:
        return
    values = [depth] if isinstance(depth, (int, float)) else list(depth)
    if not isinstance(depth, (int, float)) and len(values) != count:
        raise ValueError(f"{where}: depth lists {len(values)} fractions but there are {count} needles")
    for d in values:
        if not 0.0 <= float(d) <= 1.0:
            raise ValueError(f"{where}: depth {d} is outside [0, 1]; use a fraction of the context")


def resolve_depths(depth: float | Sequence[float] | None, count: int, rng: random.Random) -> list[float]:
    """Depth fractions for ``count`` units, sorted ascending.

    Args:
        depth: ``None`` draws each depth uniformly from ``rng``; a float puts every unit there; a
            sequence gives one fraction per unit.
        count: Number of units.
        rng: Random source for ``depth=None``.
    """
    if depth is None:
        return sorted(rng.random() for _ in range(count))
    if isinstance(depth, (int, float)):
        return [float(depth)] * count
    return sorted(float(d) for d in depth)


def join_queries(queries: Sequence[str]) -> str:
    """Join query keys as ``"a"``, ``"a and b"`` or ``"a, b, and c"``."""
    if len(queries) == 1:
        return queries[0]
    if len(queries) == 2:
        return f"{queries[0]} and {queries[1]}"
    return ", ".join(queries[:-1]) + ", and " + queries[-1]
