"""What a judge back end is, what one judgement records, and the judge's per-step counters."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol

from longact_pl.metric_reduce import Metric
from longact_pl.rewards.types import FatalRewardError

Messages = list[dict[str, str]]


class JudgeBackend(Protocol):
    """Answers chat requests: one reply text, or the exception that request ended with, per request.

    A back end sends the requests of one call concurrently (or as one batch) and never raises for a single
    request: its failure is returned in its slot, so the judge retries only the failed ones.
    """

    def complete(self, requests: list[Messages]) -> list[str | BaseException]:
        """One reply (or exception) per request, in order."""
        ...


class JudgeError(RuntimeError):
    """A request that the back end could not answer (unreachable, timed out, a malformed response)."""


class JudgeFailure(FatalRewardError):
    """Judgements failed after their retries and ``on_failure=fail``: the run stops with this error."""


@dataclass
class Judgement:
    """One (question, references, answer) judged.

    Attributes:
        question: The question asked.
        references: The reference answers.
        answer: The answer judged (the completion's extracted final answer).
        verdict: 1.0 (equivalent), 0.0 (not), ``None`` (no verdict: the request failed or was unparsable).
        raw: The judge's reply text (``None`` when no reply came).
        error: Why there is no verdict (``None`` when there is one).
        attempts: Requests sent for it (0 for a cache hit).
        cached: Taken from the cache.
    """

    question: str
    references: list[str]
    answer: str
    verdict: float | None = None
    raw: str | None = None
    error: str | None = None
    attempts: int = 0
    cached: bool = False

    def row(self, **extra) -> dict:
        """The judgement as a JSON row (with ``extra`` fields first)."""
        return {**extra, **asdict(self)}


@dataclass
class JudgeStats:
    """Counters of the judge since the last :meth:`reset` (one RL step), as logged metrics.

    Attributes:
        calls: Judgements asked of the back end (first attempts; cache hits excluded).
        retries: Requests sent again after a failed attempt.
        failures: Judgements left without a verdict after their retries (failed requests, unparsable replies).
        cache_hits: Judgements answered from the cache.
        fallbacks: Completions scored by the rule because their judgement failed (``on_failure=fallback``).
        seconds: Wall time spent in the judge.
    """

    calls: int = 0
    retries: int = 0
    failures: int = 0
    cache_hits: int = 0
    fallbacks: int = 0
    seconds: float = 0.0
    _fields: tuple = field(default=("calls", "retries", "failures", "cache_hits", "fallbacks", "seconds"),
                           repr=False)  # fmt: skip

    def reset(self) -> None:
        """Zero every counter."""
        for name in self._fields:
            setattr(self, name, 0)

    def metrics(self, prefix: str = "train/judge/") -> dict[str, Metric]:
        """``{prefix + name: value}`` of every counter, as it combines over data-parallel ranks.

        Counts add up; ``seconds`` (the judge's wall time in the step, spent by the ranks at once) is the
        slowest rank's.
        """
        return {
            prefix + name: Metric(getattr(self, name), "max" if name == "seconds" else "sum")
            for name in self._fields
        }
