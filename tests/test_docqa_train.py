"""GRPO on a DocQA fixture with rule_then_judge and a stdlib judge server on 127.0.0.1 (tiny policy)."""

from __future__ import annotations

import csv
import json

import torch

from longact_pl.models.hf import load_hf
from longact_pl.models.tiny import tiny_llama
from longact_pl.train import run
from tests.data.docqa_fixture import write_docqa
from tests.helpers import NO_CKPT, compose_train
from tests.rewards.judge.server import JudgeServer


def docqa_overrides(tmp_path, url: str, steps: int) -> list[str]:
    """A tiny-Llama GRPO run on the fixture, judged by the server at ``url`` (whole completions judged: a
    random policy states no final answer)."""
    data = write_docqa(tmp_path / "docqa.jsonl", rows=4)
    return [
        "model=tiny_llama", "data=docqa", f"data.train.path={data}", "data.max_prompt_tokens=256",
        "data.reward.extract=false", "data.reward.rule.extract=false",
        "judge=http", f"judge.base_url={url}", "judge.model=stub", "judge.timeout_s=5",
        f"trainer.max_steps={steps}", "trainer.precision=32-true", "rollout.max_new_tokens=8",
        "rollout.group_size=4", "module.optimizer.lr=1e-3", "validate_before_training=false", NO_CKPT,
    ]  # fmt: skip


def test_grpo_trains_on_docqa_with_rule_then_judge(tmp_path):
    # the server's first 3 requests fail (HTTP 503) and are not retried: step 0 falls back for them
    with JudgeServer(mode="parity", fail_first=3) as server:
        overrides = [*docqa_overrides(tmp_path, server.url, steps=2), "data.reward.judge.max_retries=0"]
        cfg = compose_train(tmp_path, *overrides, tiny=False)
        run(cfg, tmp_path)
        served = server.requests
    with open(tmp_path / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/reward_mean")]
    assert len(rows) == 2
    calls = [float(r["train/judge/calls"]) for r in rows]
    hits = [float(r["train/judge/cache_hits"]) for r in rows]
    # every completion a rule miss (random text): B * G = 8 judgements per step, requests or cache hits
    assert [c + h for c, h in zip(calls, hits)] == [8.0, 8.0] and sum(calls) == served
    assert [float(r["train/judge/failures"]) for r in rows] == [3.0, 0.0]
    assert [float(r["train/judge/fallbacks"]) for r in rows] == [3.0, 0.0]  # the step went on, counted
    assert sum(float(r["train/truncated_prompts"]) for r in rows) >= 1  # the long documents were cut
    verdicts = [json.loads(x) for x in (tmp_path / "judge_verdicts" / "rank0.jsonl").read_text().splitlines()]
    assert len(verdicts) == 16 and {v["step"] for v in verdicts} == {0, 1}  # failed ones kept too
    assert sum("HTTP 503" in (v["error"] or "") for v in verdicts) == 3
    assert {v["verdict"] for v in verdicts} == {None, 0.0, 1.0}  # mixed rewards: the policy trains
    start, final = tiny_llama(seed=cfg.seed).model, load_hf(str(tmp_path / "final"), dtype="float32").model
    assert any(not torch.equal(p, start.get_parameter(n)) for n, p in final.named_parameters())
