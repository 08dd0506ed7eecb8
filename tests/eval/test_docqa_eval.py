"""``evaluate.py eval=docqa``: rule-then-judge scores per source, verdicts kept, paired by compare_evals."""

from __future__ import annotations

import importlib.util
import json

from longact_pl.eval.runner import run
from tests.data.docqa_fixture import write_docqa
from tests.eval.helpers import compose_eval
from tests.helpers import ROOT
from tests.rewards.judge.server import JudgeServer

_spec = importlib.util.spec_from_file_location("compare_evals", ROOT / "scripts" / "compare_evals.py")
_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_script)


def test_docqa_eval_per_source_and_paired_comparison(tmp_path):
    data = write_docqa(tmp_path / "docqa.jsonl", rows=6)
    summaries = []
    with JudgeServer(mode="parity") as server:
        for seed in (1, 2):
            out = tmp_path / f"eval{seed}"
            cfg = compose_eval(
                out, "eval=docqa", f"eval.path={data}", "eval.max_input_tokens=256", "eval.max_new_tokens=6",
                "eval.batch_size=3", "eval.reward.extract=false", "eval.reward.rule.extract=false",
                "judge=http", f"judge.base_url={server.url}", "judge.model=stub", f"seed={seed}",
                "eval.greedy=false", "rollout.group_size=2", "rollout.temperature=1.0", "eval.seed=0",
            )  # fmt: skip
            summary = run(cfg, out)
            summaries.append(out / "summary.json")
            rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
            judged = [r for r in rows if r["output"].strip()]  # an empty completion has nothing to judge
            assert len(rows) == 12 and judged and all(r["judge"]["verdict"] in (0.0, 1.0) for r in judged)
            by_source = {s: [r["score"] for r in rows if r["task"] == s] for s in ("synth_a", "synth_b")}
            means = {s: sum(v) / len(v) for s, v in by_source.items()}
            assert summary["scores"]["synth_a"] == round(means["synth_a"], 4)
            assert summary["overall"] == round(
                (summary["by_source"]["synth_a"] + summary["by_source"]["synth_b"]) / 2, 4
            )
            judge = summary["judge"]
            assert summary["truncated"] == 6 and judge["calls"] + judge["cache_hits"] == len(judged)
            assert len((out / "judge_verdicts" / "rank0.jsonl").read_text().splitlines()) == len(judged)
    assert (
        _script.main([str(p) for p in summaries] + ["--out", str(tmp_path / "cmp"), "--n-boot", "200"]) == 0
    )
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| synth_a |" in table and "| overall |" in table and "[" in table.split("| overall |")[1]  # a CI
