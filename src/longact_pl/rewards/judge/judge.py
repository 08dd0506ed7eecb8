"""An LLM judge over any back end: a cache, batching, retries with back-off, counters and kept verdicts."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from longact_pl.rewards.judge.prompt import (
    DEFAULT_SYSTEM,
    DEFAULT_TEMPLATE,
    build_messages,
    check_template,
    parse_verdict,
)
from longact_pl.rewards.judge.records import VerdictRecords
from longact_pl.rewards.judge.types import JudgeBackend, Judgement, JudgeStats

log = logging.getLogger(__name__)

Item = tuple[str, list[str], str]  # (question, references, answer)


class LLMJudge:
    """Judges whether answers are equivalent to references, all of one call's items at once.

    A call (:meth:`judge`) takes every item of an RL step (the ``G x B`` completions the rule did not accept):
    cached and repeated items are answered without a request, the rest go to the back end in one batch (which
    sends them concurrently), and the requests that failed are sent again up to ``max_retries`` times, waiting
    ``backoff_s * 2**attempt`` seconds (at most ``max_backoff_s``) before each round. A reply without a
    verdict (no YES/NO) is not retried: the judge is greedy, so it would say the same again. Items left
    without a verdict have ``verdict=None``; what that means (fail the run or keep the rule score) is the
    combinator's choice (:class:`~longact_pl.rewards.judged.RuleThenJudge`).

    Args:
        backend: Sends the requests (:class:`~longact_pl.rewards.judge.http.OpenAIHttpBackend`,
            :class:`~longact_pl.rewards.judge.local.VllmJudgeBackend`).
        template: User message with ``{question}``, ``{answer}`` and ``{reference}`` slots.
        system_prompt: System message (``None``: QwenLong-L1's verifier instructions; ``""``: none).
        max_retries: Further attempts of a failed request.
        backoff_s: Wait before the first retry round, doubled each round.
        max_backoff_s: Longest wait between rounds.
        cache_size: Verdicts kept, keyed by (question, references, answer); oldest dropped first (0 = none).
        records_dir: Folder of the raw verdicts (``judge_verdicts/`` of the run; ``None``: not kept).
    """

    def __init__(
        self,
        backend: JudgeBackend,
        template: str = DEFAULT_TEMPLATE,
        system_prompt: str | None = None,
        max_retries: int = 2,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        cache_size: int = 100_000,
        records_dir: str | Path | None = None,
    ) -> None:
        if backend is None:
            raise ValueError(
                "the reward needs an LLM judge back end: add judge=http judge.base_url=<http://host:port/v1> "
                "judge.model=<name> (an OpenAI-compatible server) or judge=vllm (a local engine)"
            )
        check_template(template)
        if max_retries < 0 or backoff_s < 0 or max_backoff_s < 0 or cache_size < 0:
            raise ValueError("judge: max_retries, backoff_s, max_backoff_s and cache_size must be >= 0")
        self.backend = backend
        self.template = template
        self.system_prompt = DEFAULT_SYSTEM if system_prompt is None else system_prompt
        self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s
        self.cache_size = cache_size
        self.cache: OrderedDict[tuple[str, str, str], Judgement] = OrderedDict()
        self.records = VerdictRecords(records_dir)
        self.stats = JudgeStats()
        self.step, self.phase = 0, "train"

    def begin_step(self, step: int, phase: str) -> None:
        """Start the counters of a new step (and tag the verdicts written from now on)."""
        self.step, self.phase = step, phase
        self.stats.reset()

    @staticmethod
    def key(item: Item) -> tuple[str, str, str]:
        """The cache key of an item: (question, references joined, answer), whitespace-stripped."""
        question, references, answer = item
        return question.strip(), "\x1f".join(r.strip() for r in references), answer.strip()

    def judge(self, items: Sequence[Item]) -> list[Judgement]:
        """One judgement per item (``verdict=None`` where none was obtained); verdicts are written to disk."""
        start = time.perf_counter()
        out: list[Judgement | None] = [None] * len(items)
        todo: dict[tuple[str, str, str], list[int]] = {}
        for i, item in enumerate(items):
            key = self.key(item)
            hit = self.cache.get(key)
            if hit is not None:
                self.cache.move_to_end(key)
                self.stats.cache_hits += 1
                out[i] = Judgement(*item, verdict=hit.verdict, raw=hit.raw, cached=True)
            else:
                todo.setdefault(key, []).append(i)
        fresh = self._ask([items[rows[0]] for rows in todo.values()])
        for rows, judgement in zip(todo.values(), fresh):
            if judgement.verdict is not None and self.cache_size:
                self.cache[self.key(items[rows[0]])] = judgement
                while len(self.cache) > self.cache_size:
                    self.cache.popitem(last=False)
            for k, i in enumerate(rows):  # a repeat within the batch counts as a cache hit
                out[i] = judgement if k == 0 else Judgement(*items[i], judgement.verdict, judgement.raw,
                                                            judgement.error, 0, cached=True)  # fmt: skip
                self.stats.cache_hits += int(k > 0)
        done = [j for j in out if j is not None]
        self.records.write(done, self.step, self.phase)
        self.stats.seconds += time.perf_counter() - start
        return done

    def _ask(self, items: list[Item]) -> list[Judgement]:
        """Send ``items`` (with retries); a judgement per item."""
        judgements = [Judgement(q, list(refs), a) for q, refs, a in items]
        requests = [build_messages(self.template, self.system_prompt, q, refs, a) for q, refs, a in items]
        pending = list(range(len(items)))
        self.stats.calls += len(items)
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))
                self.stats.retries += len(pending)
            replies = self.backend.complete([requests[i] for i in pending])
            if len(replies) != len(pending):
                raise RuntimeError(f"judge back end returned {len(replies)} replies for {len(pending)}")
            failed = []
            for i, reply in zip(pending, replies):
                j = judgements[i]
                j.attempts += 1
                if isinstance(reply, BaseException):
                    j.error = f"{type(reply).__name__}: {reply}"
                    failed.append(i)
                    continue
                j.raw, j.verdict = reply, parse_verdict(reply)
                j.error = None if j.verdict is not None else "no YES/NO verdict in the reply"
            pending = failed
            if not pending:
                break
        self.stats.failures += sum(j.verdict is None for j in judgements)
        if pending:
            first = judgements[pending[0]].error
            log.warning("judge: %d of %d requests failed after %d attempts (first: %s)",
                        len(pending), len(items), self.max_retries + 1, first)  # fmt: skip
        return judgements
