"""RULER's string-match metrics as RL rewards.

A reward is a callable ``(completions, references, **meta) -> list[float]``: ``completions[i]`` is
scored against ``references[i]`` (the trainer repeats a prompt's references for each of its completions).
The reference may appear anywhere in the completion: small models echo the question before the answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from longact_pl.rewards.answers import check_batch

_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess(prediction: str) -> str:
    """RULER's clean-up: control characters become newlines, then surrounding whitespace is stripped."""
    return _CONTROL.sub("\n", prediction).strip()


def match_all(prediction: str, references: Sequence[str]) -> float:
    """Fraction of ``references`` found (case-insensitively) in ``prediction``."""
    pred = postprocess(prediction).lower()
    return sum(1.0 if r.lower() in pred else 0.0 for r in references) / len(references)


def match_part(prediction: str, references: Sequence[str]) -> float:
    """1.0 if any of ``references`` is found (case-insensitively) in ``prediction``, else 0.0."""
    pred = postprocess(prediction).lower()
    return max(1.0 if r.lower() in pred else 0.0 for r in references)


class StringMatchAll:
    """RULER ``string_match_all``: the fraction of references present in each completion."""

    def __call__(
        self, completions: Sequence[str], references: Sequence[Sequence[str]], **meta
    ) -> list[float]:
        """Score each completion against its references (``meta`` is ignored)."""
        check_batch(completions, references, "StringMatchAll")
        return [match_all(c, r) for c, r in zip(completions, references)]


class StringMatchPart:
    """RULER ``string_match_part``: 1.0 if any reference is present in the completion."""

    def __call__(
        self, completions: Sequence[str], references: Sequence[Sequence[str]], **meta
    ) -> list[float]:
        """Score each completion against its references (``meta`` is ignored)."""
        check_batch(completions, references, "StringMatchPart")
        return [match_part(c, r) for c, r in zip(completions, references)]
