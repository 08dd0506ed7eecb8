"""Rule first, then an LLM judge (QwenLong-L1).

A completion the rule does not fully accept is judged, and scores ``max(rule, verdict)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from longact_pl.rewards.answers import answer_of
from longact_pl.rewards.judge.judge import LLMJudge
from longact_pl.rewards.judge.types import JudgeFailure
from longact_pl.rewards.types import RewardFn

POLICIES = ("fallback", "fail")


class RuleThenJudge:
    """The rule's score, or ``max(rule, judge verdict)`` where the rule is below ``threshold``.

    Only completions that state a final answer are judged (with ``extract``).

    All completions of one call (an RL step's ``G x B``, or an evaluation batch) are judged in one
    :meth:`LLMJudge.judge` call. A judgement that ends without a verdict (after the judge's retries) either
    stops the run with :class:`JudgeFailure` (``on_failure=fail``) or keeps the rule's score for that
    completion, counted as ``fallbacks`` (``on_failure=fallback``); it is never silently 0.

    ``meta["questions"]`` (one per completion) is required: the data must carry a question (DocQA data does).

    Args:
        rule: The rule reward (e.g. :class:`~longact_pl.rewards.qa_match.SubstringMatch`).
        judge: The judge.
        threshold: Rule scores below this are judged (1.0: anything short of a full match).
        on_failure: ``fallback`` or ``fail``.
        extract: Judge the completion's final answer (``the answer is X``; a completion without one is not
            judged); ``False``: the whole completion.
    """

    def __init__(
        self,
        rule: RewardFn,
        judge: LLMJudge,
        threshold: float = 1.0,
        on_failure: str = "fallback",
        extract: bool = True,
    ) -> None:
        if on_failure not in POLICIES:
            raise ValueError(f"reward.on_failure must be one of {list(POLICIES)}, got {on_failure!r}")
        self.rule, self.judge = rule, judge
        self.threshold, self.on_failure, self.extract = threshold, on_failure, extract
        self.last_details: list[dict | None] = []

    def begin_step(self, step: int, phase: str) -> None:
        """Reset the judge's counters for a new step or pass."""
        self.judge.begin_step(step, phase)

    def step_metrics(self) -> dict[str, float]:
        """``train/judge/*`` counts of the current step."""
        return self.judge.stats.metrics()

    def __call__(
        self, completions: Sequence[str], references: Sequence[Sequence[str]], **meta
    ) -> list[float]:
        """One score per completion; :attr:`last_details` holds each judged completion's verdict."""
        scores = [float(s) for s in self.rule(completions, references, **meta)]
        questions = meta.get("questions")
        if questions is None or len(questions) != len(completions) or any(q is None for q in questions):
            raise ValueError(
                "RuleThenJudge needs the question of every prompt (meta 'questions'); use DocQA data "
                "(data=docqa), whose rows carry a 'question' field"
            )
        rows, items = [], []
        for i, (completion, refs) in enumerate(zip(completions, references)):
            answer = answer_of(completion, self.extract)
            if scores[i] < self.threshold and answer:
                rows.append(i)
                items.append((questions[i], list(refs), answer))
        self.last_details = [None] * len(completions)
        judgements = self.judge.judge(items) if items else []
        failed = []
        for i, j in zip(rows, judgements):
            self.last_details[i] = {"verdict": j.verdict, "raw": j.raw, "error": j.error, "cached": j.cached}
            if j.verdict is None:
                failed.append(j)
            else:
                scores[i] = max(scores[i], j.verdict)
        if failed and self.on_failure == "fail":
            raise JudgeFailure(
                f"the judge gave no verdict for {len(failed)} of {len(items)} answers after "
                f"{self.judge.max_retries} retries (first: {failed[0].error}); check the judge endpoint, or "
                "set data.reward.on_failure=fallback to score those completions by the rule"
            )
        self.judge.stats.fallbacks += len(failed)
        return scores
