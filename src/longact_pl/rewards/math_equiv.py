"""Numeric / symbolic answer equivalence for DocMath-style answers, with Hugging Face's ``math-verify``."""

from __future__ import annotations

from collections.abc import Sequence

from longact_pl.rewards.answers import answer_of, check_batch


class MathEquivalence:
    r"""1.0 when the (extracted) answer is mathematically equal to a reference, else 0.0.

    ``12.50`` = ``$12.5$``, ``\\frac{1}{2}`` = ``0.5``: compared by ``math_verify.verify`` after
    ``math_verify.parse``.

    ``math-verify``'s own time limits use ``SIGALRM``, which only works in the main thread; from another
    thread they are switched off.

    Args:
        extract: Score the final answer (``the answer is X`` / ``\\boxed{X}``), not the whole completion.
        float_rounding: Decimal places numbers are rounded to before comparing.
    """

    def __init__(self, extract: bool = True, float_rounding: int = 6) -> None:
        self.extract = extract
        self.float_rounding = float_rounding

    def one(self, completion: str, references: Sequence[str]) -> float:
        """The score of one completion."""
        import threading

        from math_verify import parse, verify

        answer = answer_of(completion, self.extract)
        if not answer:
            return 0.0
        main = threading.current_thread() is threading.main_thread()
        limit = 5 if main else None
        target = parse(answer, parsing_timeout=limit)
        if not target:
            return 0.0
        for ref in references:
            gold = parse(ref if "$" in ref or "\\" in ref else f"${ref}$", parsing_timeout=limit)
            if gold and verify(gold, target, float_rounding=self.float_rounding, timeout_seconds=limit):
                return 1.0
        return 0.0

    def __call__(
        self, completions: Sequence[str], references: Sequence[Sequence[str]], **meta
    ) -> list[float]:
        """One score per completion (``meta`` is ignored)."""
        check_batch(completions, references, "MathEquivalence")
        return [self.one(c, r) for c, r in zip(completions, references)]
