"""The LLM judge over the HTTP back end, against a stdlib server on 127.0.0.1: batching, concurrency, cache,
retries with back-off, verdict records, and the fault cases (unreachable, timeout, garbage) per policy."""

from __future__ import annotations

import json
import time

import pytest
import torch

from longact_pl.rewards.hooks import begin_step, step_metrics
from longact_pl.rewards.judge.http import OpenAIHttpBackend
from longact_pl.rewards.judge.judge import LLMJudge
from longact_pl.rewards.judge.types import JudgeFailure
from longact_pl.rewards.judged import RuleThenJudge
from longact_pl.rewards.qa_match import SubstringMatch, TokenF1
from longact_pl.rewards.scoring import RewardErrors, score
from tests.rewards.judge.server import JudgeServer, closed_port_url


def make(url: str, tmp_path=None, policy: str = "fallback", timeout_s: float = 5.0, retries: int = 2):
    backend = OpenAIHttpBackend(url, "judge", timeout_s=timeout_s, concurrency=8)
    judge = LLMJudge(backend, max_retries=retries, backoff_s=0.01, records_dir=tmp_path)
    return RuleThenJudge(SubstringMatch(), judge, on_failure=policy)


# Two prompts, G = 3: the rule (sub-string EM) accepts rows 0, 1, 4, 5; rows 2 (Lyon) and 3 (4) are judged:
# the stdlib judge says NO to Lyon for Paris and YES to 4 for four.
SAMPLES = [
    {"references": ["Paris"], "task": "hotpotqa", "question": "Capital of France?"},
    {"references": ["four"], "task": "docmath", "question": "How many legs?"},
]
COMPLETIONS = [
    "the answer is Paris", "the answer is Paris city", "the answer is Lyon",
    "the answer is 4", "the answer is four", "the answer is FOUR ",
]  # fmt: skip


def test_step_batch_is_judged_at_once_with_cache_and_records(tmp_path):
    with JudgeServer(delay=0.2) as server:
        reward = make(server.url, tmp_path)
        begin_step(reward, step=7, phase="train")
        start = time.perf_counter()
        scores = score(reward, COMPLETIONS, SAMPLES, group_size=3)  # [B * G]
        took = time.perf_counter() - start
        assert scores.tolist() == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]  # row 3 by the judge's YES
        assert server.requests == 2  # only the rule's misses, in one batch
        assert server.in_flight_max == 2 and took < 0.39  # concurrent: 2 x 0.2 s would take >= 0.4 s
        metrics = step_metrics(reward)
        assert metrics["train/judge/calls"] == 2 and metrics["train/judge/cache_hits"] == 0
        # the same step again: every judgement comes from the cache, no request
        score(reward, COMPLETIONS, SAMPLES, group_size=3)
        assert server.requests == 2 and step_metrics(reward)["train/judge/cache_hits"] == 2
    rows = [json.loads(x) for x in (tmp_path / "rank0.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {r["step"] for r in rows} == {7} and {r["phase"] for r in rows} == {"train"}
    assert rows[0]["answer"] == "Lyon" and rows[0]["verdict"] == 0.0 and "[[NO]]" in rows[0]["raw"]
    assert [r["cached"] for r in rows] == [False, False, True, True]


def test_judge_yes_raises_the_rule_score():
    with JudgeServer() as server:
        reward = make(server.url)
        out = reward(["the answer is lyon", "the answer is Nice"], [["Lyon"], ["Paris"]],
                     questions=["q1", "q2"])  # fmt: skip
        assert out == [1.0, 0.0]  # lyon: rule 1 already; Nice: judged NO
        out = reward(["the answer is 4", "4"], [["four"], ["four"]], questions=["q", "q"])
        assert out == [1.0, 0.0]  # the second states no final answer: not judged
        assert server.requests == 2


def test_retries_with_back_off_then_succeed():
    with JudgeServer(fail_first=2) as server:
        reward = make(server.url, retries=2)
        begin_step(reward, 0, "train")
        assert reward(["the answer is 4"], [["four"]], questions=["q"]) == [1.0]
        assert reward(["the answer is x"], [["y"]], questions=["q"]) == [0.0]
        m = step_metrics(reward)
        assert server.requests == 4  # 2 x 503, then the verdict, then the second call
        assert (m["train/judge/retries"], m["train/judge/failures"], m["train/judge/fallbacks"]) == (2, 0, 0)


@pytest.mark.parametrize("fault", ["unreachable", "timeout", "garbage", "noverdict"])
def test_faults_fall_back_to_the_rule_score_counted(fault, tmp_path):
    with JudgeServer(
        mode="ok" if fault == "timeout" else fault, delay=1.0 if fault == "timeout" else 0.0
    ) as s:
        url = closed_port_url() if fault == "unreachable" else s.url
        reward = make(url, tmp_path, timeout_s=0.3, retries=1)
        begin_step(reward, 3, "train")
        errors = RewardErrors()
        scores = score(reward, COMPLETIONS, SAMPLES, group_size=3, errors=errors)
    # the rule's scores stand where the judge gave no verdict (never 0 for a rule match)
    assert scores.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    assert errors.count == 0  # not a reward-function error: a counted fallback
    m = step_metrics(reward)
    retried = 0 if fault == "noverdict" else 2  # a reply without a verdict is not asked again
    assert (m["train/judge/calls"], m["train/judge/failures"], m["train/judge/fallbacks"]) == (2, 2, 2)
    assert m["train/judge/retries"] == retried
    rows = [json.loads(x) for x in (tmp_path / "rank0.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["verdict"] is None and r["error"] for r in rows)  # kept, with the cause


def test_fallback_keeps_a_partial_rule_score():
    # token F1 of "big red" vs "big red car" = 0.8 (P = 1, R = 2/3): judged (< 1), the judge unreachable
    reward = RuleThenJudge(TokenF1(), LLMJudge(OpenAIHttpBackend(closed_port_url(), "m"), max_retries=0))
    assert reward(["the answer is big red"], [["big red car"]], questions=["q"]) == [pytest.approx(0.8)]
    assert reward.judge.stats.fallbacks == 1


@pytest.mark.parametrize("fault", ["unreachable", "garbage"])
def test_fail_policy_stops_the_run_with_the_cause(fault):
    with JudgeServer(mode=fault) as s:
        url = closed_port_url() if fault == "unreachable" else s.url
        reward = make(url, policy="fail", retries=1)
        with pytest.raises(JudgeFailure, match="no verdict for 2 of 2 answers.*on_failure=fallback"):
            score(reward, COMPLETIONS, SAMPLES, group_size=3, errors=RewardErrors())  # not swallowed


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="judge=http"):
        LLMJudge(None)
    with pytest.raises(ValueError, match="reference"):
        LLMJudge(OpenAIHttpBackend("http://127.0.0.1:1/v1", "m"), template="{question} {answer}")
    with pytest.raises(ValueError, match="questions"):
        make("http://127.0.0.1:1/v1")(["the answer is x"], [["y"]])


def test_scores_are_float32_tensor():
    with JudgeServer() as server:
        out = score(make(server.url), COMPLETIONS[:3], SAMPLES[:1], group_size=3)
    assert out.dtype == torch.float32 and out.shape == (3,)


def test_judge_counters_add_over_ranks_and_time_is_the_slowest_ranks():
    from longact_pl.metric_reduce import reduce_metrics
    from longact_pl.rewards.judge.types import JudgeStats
    from tests.helpers import FakeOps

    mine, other = JudgeStats(calls=3, failures=1, seconds=2.0), JudgeStats(calls=5, fallbacks=2, seconds=0.5)
    dist = FakeOps(world_size=2, other_gathers=[[(True, other.metrics())]])
    got = reduce_metrics(mine.metrics(), dist)
    assert got["train/judge/calls"] == 8 and got["train/judge/failures"] == 1
    assert got["train/judge/fallbacks"] == 2 and got["train/judge/seconds"] == 2.0
