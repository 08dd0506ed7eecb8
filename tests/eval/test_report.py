"""Effective length on hand tables, summaries and tables, and the comparison script."""

import json
import subprocess
import sys

import pytest
import torch

from longact_pl.eval.report import effective_length, longbench_summary, ruler_markdown, ruler_summary
from tests.helpers import ROOT


@pytest.mark.parametrize(
    ("averages", "threshold", "want"),
    [
        ({4096: 95.0, 8192: 90.0, 16384: 86.0, 32768: 70.0}, 85.6, 16384),
        ({4096: 95.0, 8192: 80.0, 16384: 90.0}, 85.6, 4096),  # a dip stops the count, later recovery ignored
        ({4096: 85.6, 8192: 99.0}, 85.6, None),  # at the threshold is not above it
        ({32768: 99.0, 4096: 99.0, 8192: 99.0}, 85.6, 32768),  # order of the keys does not matter
        ({1024: 40.0, 2048: 30.0}, 35.0, 1024),  # configurable threshold
    ],
)
def test_effective_length_on_hand_tables(averages, threshold, want):
    assert effective_length(averages, threshold) == want


def test_ruler_summary_and_markdown_from_metric_output():
    computed = {
        "acc/a/512": torch.tensor(1.0), "acc/b/512": torch.tensor(0.8), "acc/a/1024": torch.tensor(0.5),
        "acc/512": torch.tensor(0.9), "acc/1024": torch.tensor(0.5), "acc": torch.tensor(0.7),
    }  # fmt: skip
    skipped = [{"task": "b", "length": 1024, "index": 0, "reason": "too coarse"}]
    s = ruler_summary(computed, ["a", "b"], [512, 1024], 85.6, model="m", n=1, skipped=skipped)
    assert s["tasks"] == {"a": {"512": 100.0, "1024": 50.0}, "b": {"512": 80.0}}
    assert s["average"] == {"512": 90.0, "1024": 50.0} and s["overall"] == 70.0
    assert s["effective_length"] == 512
    assert s["scores"]["avg@1024"] == 50.0 and s["headline"] == ["avg@512", "avg@1024", "overall"]
    md = ruler_markdown(s)
    assert "| a | 100.0 | 50.0 |" in md and "| b | 80.0 | - |" in md
    assert "| **average** | **90.0** | **50.0** |" in md and "**512**" in md
    assert "b@1024 (1 of 1 samples)" in md and "The average at 1024 covers 1 of 2 tasks." in md


def test_longbench_summary_by_difficulty_and_length():
    rows = [
        {"difficulty": "easy", "length": "short", "score": 100.0, "answer": "A"},
        {"difficulty": "hard", "length": "short", "score": 0.0, "answer": None},
        {"difficulty": "hard", "length": "long", "score": 100.0, "answer": "C"},
        {"difficulty": "hard", "length": "long", "score": 0.0, "answer": "B"},
    ]
    s = longbench_summary(rows)
    assert s["overall"] == 50.0 and s["no_answer"] == 1
    assert s["by_difficulty"] == {"easy": 100.0, "hard": pytest.approx(100 / 3, abs=1e-3)}
    assert s["by_length"] == {"short": 50.0, "medium": None, "long": 50.0}
    assert s["counts"] == {"overall": 4, "easy": 1, "hard": 3, "short": 2, "medium": 0, "long": 2}
    assert "medium" not in s["scores"] and s["headline"] == ["overall", "easy", "hard", "short", "long"]


def test_compare_evals_table_with_deltas_and_chart(tmp_path):
    paths = []
    for name, score in (("base", 40.0), ("longact", 55.5)):
        (tmp_path / name).mkdir()
        summary = {
            "benchmark": "ruler",
            "scores": {"avg@512": score, "overall": score - 1},
            "headline": ["overall"],
            "effective_length": None if name == "base" else 512,
        }
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
        paths.append(str(tmp_path / name / "summary.json"))
    out = tmp_path / "cmp"
    cmd = [sys.executable, str(ROOT / "scripts" / "compare_evals.py"), *paths, "--out", str(out)]
    done = subprocess.run([*cmd, "--names", "base", "lact"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    md = (out / "comparison.md").read_text()
    assert "| avg@512 | 40.0 | 55.5 (+15.5) |" in md and "| overall | 39.0 | 54.5 (+15.5) |" in md
    assert "| effective length | - | 512 |" in md
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run([*cmd, "--names", "one"], capture_output=True, text=True)
    assert bad.returncode != 0 and "one per summary" in bad.stderr


def test_compare_evals_refuses_mixed_benchmarks(tmp_path):
    paths = []
    for name, bench in (("ruler", "ruler"), ("lb", "longbench_v2")):
        (tmp_path / name).mkdir()
        summary = {"benchmark": bench, "scores": {"overall": 50.0}, "headline": ["overall"]}
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
        paths.append(str(tmp_path / name / "summary.json"))
    out = tmp_path / "cmp"
    cmd = [sys.executable, str(ROOT / "scripts" / "compare_evals.py"), *paths, "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode != 0
    assert "different benchmarks" in done.stderr and "ruler" in done.stderr and "longbench_v2" in done.stderr
    assert not out.exists()
