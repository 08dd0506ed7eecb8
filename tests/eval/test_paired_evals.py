"""``scripts/compare_evals.py``: paired bootstrap CIs per summary row, from the evaluations' predictions."""

import importlib.util
import json

import pytest
import torch

from longact_pl.eval.accuracy import TaskLengthAccuracy
from longact_pl.eval.paired_evals import intervals_vs_first, load_prompts, row_interval
from longact_pl.eval.report import longbench_summary, ruler_summary
from tests.helpers import ROOT

_spec = importlib.util.spec_from_file_location("compare_evals", ROOT / "scripts" / "compare_evals.py")
_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_script)
main = _script.main

TASKS, LENGTHS, N = ["a", "b", "c"], [512, 1024], 8


def _ruler_eval(folder, scores, salt=""):
    """An evaluate.py folder: predictions.jsonl (one row per prompt) and the summary computed from it."""
    folder.mkdir(parents=True)
    metric = TaskLengthAccuracy(TASKS, LENGTHS)
    with (folder / "predictions.jsonl").open("w") as f:
        for (task, length), values in scores.items():
            for i, v in enumerate(values):
                row = {"id": f"{task}/{length}/{i}", "task": task, "length": length, "prompt_tokens": length,
                       "sample": 0, "references": [f"{task}{i}{salt}"], "score": 100.0 * v}  # fmt: skip
                f.write(json.dumps(row) + "\n")
            metric.update([task] * len(values), [length] * len(values), torch.tensor(values))
    summary = ruler_summary(metric.compute(), TASKS, LENGTHS, 85.6, model="m", n=N)
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder / "summary.json"


def _scores(**changes):
    """Every cell alternates 0 1 0 1 ...; ``changes`` replace cells (``a_512=[...]``)."""
    base = {(t, n): [float(i % 2) for i in range(N)] for t in TASKS for n in LENGTHS}
    for key, values in changes.items():
        task, length = key.split("_")
        base[task, int(length)] = values
    return base


def test_row_intervals_are_the_summary_deltas_with_cis(tmp_path):
    flipped = [float(1 - i % 2) for i in range(N)]  # every prompt changes, the mean does not
    base = _ruler_eval(tmp_path / "base", _scores(a_512=[0.0] * N))
    other = _ruler_eval(tmp_path / "other", _scores(a_512=[1.0] * N, c_1024=flipped))
    (b, o) = (json.loads(p.read_text()) for p in (base, other))
    (pb, po) = (load_prompts(p) for p in (base, other))
    for key in ("a@512", "avg@512", "overall", "c@1024", "b@1024"):
        ci = row_interval("ruler", key, pb, po, n_boot=1000)
        assert ci.mean == pytest.approx(o["scores"][key] - b["scores"][key], abs=1e-3)  # summaries round
    # a@512: every prompt 0 -> 100: the CI is the point +100; avg@512 = +100/3; overall = +100/6
    a = row_interval("ruler", "a@512", pb, po, n_boot=1000)
    assert (a.lo, a.hi) == (100.0, 100.0) and a.excludes_zero
    assert row_interval("ruler", "overall", pb, po, n_boot=1000).mean == pytest.approx(100 / 6)
    # c@1024: each prompt moved by +-100 yet the mean did not: a wide CI around 0, not marked
    c = row_interval("ruler", "c@1024", pb, po, n_boot=1000)
    assert c.mean == 0.0 and c.lo < -30 and c.hi > 30 and not c.excludes_zero
    assert row_interval("ruler", "effective_length", pb, po) is None


def test_script_marks_rows_whose_ci_excludes_zero(tmp_path):
    base = _ruler_eval(tmp_path / "base", _scores(a_512=[0.0] * N))
    other = _ruler_eval(tmp_path / "other", _scores(a_512=[1.0] * N))
    out = tmp_path / "cmp"
    assert main([str(base), str(other), "--names", "base", "lact", "--out", str(out), "--n-boot", "500"]) == 0
    md = (out / "comparison.md").read_text()
    assert "| a@512 | 0.0 | 100.0 (+100.0 [+100.0, +100.0] ✱) |" in md
    assert "| b@512 | 50.0 | 50.0 (+0.0 [+0.0, +0.0]) |" in md
    assert "✱: the CI excludes 0" in md


def test_different_prompts_or_no_predictions_warn_and_drop_the_cis(tmp_path, capsys):
    base = _ruler_eval(tmp_path / "base", _scores())
    other = _ruler_eval(tmp_path / "other", _scores(), salt="x")  # another eval.seed: other needles
    intervals, warnings = intervals_vs_first(
        [base, other], [json.loads(p.read_text()) for p in (base, other)]
    )
    assert intervals == [{}, {}] and "different prompts" in warnings[0] and "a/512/0" in warnings[0]
    (tmp_path / "other" / "predictions.jsonl").unlink()
    out = tmp_path / "cmp"
    assert main([str(base), str(other), "--out", str(out)]) == 0
    assert "no predictions.jsonl beside" in capsys.readouterr().err
    assert "| a@512 | 50.0 | 50.0 (+0.0) |" in (out / "comparison.md").read_text()


def test_longbench_rows_use_their_split(tmp_path):
    def write(folder, scores):
        folder.mkdir()
        rows = [{"id": f"q{i}", "difficulty": "easy" if i < 4 else "hard", "length": "short", "gold": "A",
                 "answer": "A", "prompt_tokens": 100, "score": s} for i, s in enumerate(scores)]  # fmt: skip
        (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / "summary.json").write_text(json.dumps(longbench_summary(rows)))
        return folder / "summary.json"

    base = write(tmp_path / "base", [0.0] * 8)
    other = write(tmp_path / "other", [100.0] * 4 + [0.0] * 4)
    pb, po = load_prompts(base), load_prompts(other)
    assert row_interval("longbench_v2", "easy", pb, po, n_boot=500).mean == 100.0
    assert row_interval("longbench_v2", "hard", pb, po, n_boot=500).mean == 0.0
    assert row_interval("longbench_v2", "overall", pb, po, n_boot=500).mean == 50.0
