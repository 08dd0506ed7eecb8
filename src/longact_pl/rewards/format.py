"""A format reward that favours short, direct answers.

Rule: a completion earns 1.0 when, after RULER's clean-up, it is non-empty and has at most ``max_words``
whitespace-separated words, else 0.0. Needle, QA and extraction answers are a few words long; the rule
discourages rambling (which also games substring matching by listing many candidates) without needing
an exact answer format.
"""

from __future__ import annotations

from collections.abc import Sequence

from longact_pl.rewards.string_match import postprocess


class ConciseAnswer:
    """1.0 for a non-empty completion of at most ``max_words`` words, else 0.0.

    Args:
        max_words: Longest answer (in words) that still counts as concise.
    """

    def __init__(self, max_words: int = 48) -> None:
        if max_words < 1:
            raise ValueError(f"ConciseAnswer: max_words must be >= 1, got {max_words}")
        self.max_words = max_words

    def __call__(
        self, completions: Sequence[str], references: Sequence[Sequence[str]], **meta
    ) -> list[float]:
        """Score each completion (``references`` and ``meta`` are ignored)."""
        out = []
        for c in completions:
            words = len(postprocess(c).split())
            out.append(1.0 if 0 < words <= self.max_words else 0.0)
        return out
