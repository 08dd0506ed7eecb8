"""Per-step hooks of reward components that keep counters (the LLM judge), found through combinators.

A component takes part by having ``begin_step(step, phase)`` and ``step_metrics() -> dict``; combinators
are searched through their ``terms`` (and a ``rule``), so a judge nested in ``WeightedSum``/``MaxOf`` counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from longact_pl.metric_reduce import Metric


def components(reward_fn: Any) -> Iterator[Any]:
    """``reward_fn`` and every reward nested in it (``terms``, ``rule``), depth first."""
    yield reward_fn
    for term in getattr(reward_fn, "terms", None) or []:
        yield from components(term)
    rule = getattr(reward_fn, "rule", None)
    if rule is not None:
        yield from components(rule)


def begin_step(reward_fn: Any, step: int, phase: str) -> None:
    """Start a step (``phase``: ``train``, ``val`` or ``eval``) in every component with counters."""
    for part in components(reward_fn):
        hook = getattr(part, "begin_step", None)
        if callable(hook):
            hook(step, phase)


def step_metrics(reward_fn: Any) -> dict[str, Metric]:
    """The counters of the current step, summed over components; each combines over ranks by its rule."""
    out: dict[str, Metric] = {}
    for part in components(reward_fn):
        hook = getattr(part, "step_metrics", None)
        if callable(hook):
            for key, value in hook().items():
                how = getattr(value, "how", "sum")  # a plain number from a component is a count
                out[key] = Metric(float(out.get(key, 0.0)) + float(value), how)
    return out
