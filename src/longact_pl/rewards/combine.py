"""Weighted sum of several rewards."""

from __future__ import annotations

from collections.abc import Callable, Sequence


class WeightedSum:
    """``sum_k weights[k] * terms[k](completions, references, **meta)`` per completion.

    Args:
        terms: Reward callables.
        weights: One weight per term.
    """

    def __init__(self, terms: Sequence[Callable[..., list[float]]], weights: Sequence[float]) -> None:
        if not terms or len(terms) != len(weights):
            raise ValueError(
                f"WeightedSum: got {len(terms)} terms and {len(weights)} weights; give one weight per term"
            )
        self.terms = list(terms)
        self.weights = [float(w) for w in weights]

    def __call__(
        self, completions: Sequence[str], references: Sequence[Sequence[str]], **meta
    ) -> list[float]:
        """Combine the terms' scores for each completion."""
        total = [0.0] * len(completions)
        for term, weight in zip(self.terms, self.weights):
            scores = term(completions, references, **meta)
            if len(scores) != len(completions):
                raise ValueError(f"WeightedSum: {type(term).__name__} returned {len(scores)} scores")
            total = [t + weight * s for t, s in zip(total, scores)]
        return total


class MaxOf:
    """``max_k terms[k](completions, references, **meta)`` per completion (e.g. sub-string EM or F1 > 0.5).

    Args:
        terms: Reward callables.
    """

    def __init__(self, terms: Sequence[Callable[..., list[float]]]) -> None:
        if not terms:
            raise ValueError("MaxOf: give at least one term")
        self.terms = list(terms)

    def __call__(
        self, completions: Sequence[str], references: Sequence[Sequence[str]], **meta
    ) -> list[float]:
        """The best term's score for each completion."""
        best = [float("-inf")] * len(completions)
        for term in self.terms:
            scores = term(completions, references, **meta)
            if len(scores) != len(completions):
                raise ValueError(f"MaxOf: {type(term).__name__} returned {len(scores)} scores")
            best = [max(b, float(s)) for b, s in zip(best, scores)]
        return best
