"""evaluate.py end to end on the tiny model: RULER and LongBench v2 outputs, numbers, refusals."""

import json
import subprocess
import sys

import pytest

from longact_pl.eval.runner import run
from tests.eval.helpers import FIXTURE, ScriptedRollout, compose_eval
from tests.helpers import ROOT

PNG = b"\x89PNG\r\n\x1a\n"
ODD = "tests.eval.helpers.OddLength"


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


def _mean(values):
    return sum(values) / len(values)


def test_ruler_command_writes_predictions_summary_tables_and_png(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "evaluate.py", "eval=ruler", "model=tiny_llama", "eval.lengths=[512]", "eval.n=2",
           "eval.only=[niah_single_1,vt]", "eval.tasks.niah_single_1.max_new_tokens=16", "progress=false",
           f"hydra.run.dir={out}"]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _rows(out)
    assert [(r["task"], r["length"]) for r in rows] == [("niah_single_1", 512)] * 2 + [("vt", 512)] * 2
    assert {r["id"] for r in rows} == {"niah_single_1/512/0", "niah_single_1/512/1", "vt/512/0", "vt/512/1"}
    for r in rows:
        assert r["prompt_tokens"] > 512 and set(r) >= {"output", "answer", "references", "score"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmark"] == "ruler" and summary["lengths"] == [512] and summary["n"] == 2
    assert summary["budgets"] == {"niah_single_1": 16, "vt": 30}
    for task in ("niah_single_1", "vt"):
        assert summary["tasks"][task]["512"] == pytest.approx(
            _mean([r["score"] for r in rows if r["task"] == task])
        )
    md = (out / "summary.md").read_text()
    assert "| task | 512 |" in md and "| niah_single_1 |" in md and "Effective length" in md
    assert (out / "ruler.png").read_bytes()[:8] == PNG
    assert (out / "config.yaml").is_file()


def test_ruler_summary_aggregates_sampled_predictions(tmp_path):
    cfg = compose_eval(
        tmp_path, "eval.lengths=[512]", "eval.n=3", "eval.batch_size=2", "eval.only=[niah_single_1,fwe]",
        "eval.greedy=false", "rollout.group_size=2", f"eval.tasks.niah_single_1.metric._target_={ODD}",
        f"eval.tasks.fwe.metric._target_={ODD}", "eval.tasks.niah_single_1.max_new_tokens=7",
        "eval.tasks.fwe.max_new_tokens=5", "eval.threshold=10",
    )  # fmt: skip
    summary = run(cfg, tmp_path)
    rows = _rows(tmp_path)
    assert len(rows) == 2 * 3 * 2 and {r["sample"] for r in rows} == {0, 1}
    assert all(r["score"] == 100.0 * (len(r["output"]) % 2) for r in rows)
    cells = {t: _mean([r["score"] for r in rows if r["task"] == t]) for t in ("niah_single_1", "fwe")}
    assert 0 < sum(cells.values()) < 200  # mixed scores, so the averages are really checked
    assert summary["tasks"] == {t: {"512": pytest.approx(v, abs=1e-3)} for t, v in cells.items()}
    assert summary["average"]["512"] == pytest.approx(_mean(list(cells.values())), abs=1e-3)
    assert summary["overall"] == pytest.approx(summary["average"]["512"])
    assert summary["effective_length"] == (512 if summary["average"]["512"] > 10 else None)
    assert summary == json.loads((tmp_path / "summary.json").read_text())


def test_longbench_v2_on_the_tiny_model(tmp_path):
    cfg = compose_eval(tmp_path, "eval=longbench_v2", f"eval.path={FIXTURE}", "eval.max_new_tokens=6",
                       "eval.batch_size=3")  # fmt: skip
    summary = run(cfg, tmp_path)
    rows = _rows(tmp_path)
    assert [r["id"] for r in rows] == [f"lb-000{i}" for i in range(1, 7)]
    assert all(r["score"] == (100.0 if r["answer"] == r["gold"] else 0.0) for r in rows)
    assert summary["counts"] == {"overall": 6, "easy": 3, "hard": 3, "short": 2, "medium": 2, "long": 2}
    assert summary["no_answer"] == sum(r["answer"] is None for r in rows)
    assert summary["max_input_tokens"] == 8192 - 6  # the tiny model's window minus the budget
    assert "| accuracy |" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "longbench_v2.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize("cot", [False, True])
def test_longbench_v2_accuracy_by_split_with_a_scripted_engine(tmp_path, cot):
    engine = "rollout._target_=tests.eval.helpers.ScriptedRollout"
    cfg = compose_eval(tmp_path, "eval=longbench_v2", f"eval.path={FIXTURE}", f"eval.cot={cot}",
                       f"eval.max_input_tokens={190 if cot else 150}", engine)  # fmt: skip
    summary = run(cfg, tmp_path)
    # the engine always answers "**The correct answer is (A)**"; gold A: lb-0002 (hard, short), lb-0006 (easy,
    # long)
    assert summary["overall"] == pytest.approx(100 / 3, abs=1e-3) and summary["no_answer"] == 0
    assert summary["by_difficulty"] == {
        "easy": pytest.approx(100 / 3, abs=1e-3),
        "hard": pytest.approx(100 / 3, abs=1e-3),
    }
    assert summary["by_length"] == {"short": 50.0, "medium": 0.0, "long": 50.0}
    rows = _rows(tmp_path)
    assert all(r["prompt_tokens"] <= (190 if cot else 150) for r in rows) and any(
        r["truncated"] for r in rows
    )
    if cot:
        assert all(r["reasoning"] == "Step one." for r in rows) and summary["prompt"] == "0-shot CoT"
        answer_calls = [p for p in ScriptedRollout.seen if "Based on the above" in p]
        assert len(answer_calls) == 6 and all(
            "Let’s think step by step: Step one.\n\n" in p for p in answer_calls
        )
        assert len(ScriptedRollout.seen) == 12
    else:
        assert len(ScriptedRollout.seen) == 6 and all(r["reasoning"] is None for r in rows)


def test_existing_results_are_never_overwritten(tmp_path):
    (tmp_path / "predictions.jsonl").write_text("old\n")
    with pytest.raises(FileExistsError, match="already holds results"):
        run(compose_eval(tmp_path, "eval=longbench_v2", f"eval.path={FIXTURE}"), tmp_path)
    assert (tmp_path / "predictions.jsonl").read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.jsonl"]


def test_bad_input_fails_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl: no such file"):
        run(compose_eval(out, "eval=longbench_v2", f"eval.path={tmp_path / 'missing.jsonl'}"), out)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"_id": "z", "question": "q"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 1 \(_id=z\): field 'domain' is missing"):
        run(compose_eval(out, "eval=longbench_v2", f"eval.path={bad}"), out)
    with pytest.raises(ValueError, match="eval.path is required"):
        run(compose_eval(out, "eval=longbench_v2"), out)
    with pytest.raises(ValueError, match=r"eval.only names unknown task\(s\) \['nope'\]"):
        run(compose_eval(out, "eval.only=[nope]"), out)
    assert not out.exists()
