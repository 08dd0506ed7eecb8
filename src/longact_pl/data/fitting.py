"""Fit a generated prompt to a target token length by choosing how many filler units it holds.

A task renders its prompt as a pure function of an integer ``n`` (filler sentences, documents, words...).
The prompt length in tokens is close to linear in ``n``, so a secant search on the measured lengths lands
within a unit or two of the target in two or three tokenizations, even for 32k-token prompts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Relative tolerance promised to callers: the fitted prompt is within 5% of the target.
MAX_REL_ERROR = 0.05


def count_tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    """Count the tokens of ``text`` without special tokens or chat template."""
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def fit_units(
    render: Callable[[int], str],
    count: Callable[[str], int],
    target: int,
    per_unit_tokens: float,
    min_units: int = 0,
    max_iters: int = 12,
) -> tuple[str, int, int]:
    """Find ``n`` whose rendering has about ``target`` tokens.

    Args:
        render: Builds the prompt holding ``n`` filler units; must be a pure function of ``n``.
        count: Token count of a prompt.
        target: Wanted token count.
        per_unit_tokens: Rough tokens per unit, for the first guess of ``n``.
        min_units: Smallest allowed ``n``.
        max_iters: Tokenizations allowed after the first two.

    Returns:
        ``(text, n, tokens)`` of the closest rendering found.

    Raises:
        ValueError: If even ``min_units`` units overshoot the target by more than 5%, or if no rendering
            within 5% of the target was found.
    """
    cache: dict[int, int] = {}

    def measure(n: int) -> int:
        if n not in cache:
            cache[n] = count(render(n))
        return cache[n]

    base = measure(min_units)
    if base > target * (1 + MAX_REL_ERROR):
        raise ValueError(
            f"target length {target} tokens is too short: the fixed part of the prompt alone is {base} "
            "tokens; raise the target length or make the task smaller (fewer needles/items)"
        )
    if base >= target:
        return render(min_units), min_units, base
    a_n, a_t = min_units, base
    b_n = min_units + max(1, math.ceil((target - base) / max(per_unit_tokens, 1e-6)))
    b_t = measure(b_n)
    for _ in range(max_iters):
        slope = (b_t - a_t) / (b_n - a_n) if b_n != a_n else 0.0
        # A flat or falling measurement (coarse units) falls back to doubling.
        nxt = max(b_n, a_n) * 2 + 1 if slope <= 0 else max(min_units, round(b_n + (target - b_t) / slope))
        if nxt in cache:
            break
        a_n, a_t = b_n, b_t
        b_n, b_t = nxt, measure(nxt)
        if abs(b_t - target) <= max(1.0, 0.005 * target):
            break
    best = min(cache, key=lambda n: (abs(cache[n] - target), n))
    # Probe the neighbours: the secant may stop one unit away from the closest rendering.
    for n in (best - 1, best + 1):
        if n >= min_units and n not in cache and abs(cache[best] - target) > 0.005 * target:
            measure(n)
    best = min(cache, key=lambda n: (abs(cache[n] - target), n))
    tokens = cache[best]
    if abs(tokens - target) > MAX_REL_ERROR * target:
        raise ValueError(
            f"could not fit the prompt to {target} tokens (closest: {tokens} tokens with {best} units); "
            "the filler units are too coarse for this target, use a longer target length"
        )
    return render(best), best, tokens
