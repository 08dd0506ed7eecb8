"""Issue 22: a cut-short or binary config.yaml / metrics.csv is unknown (skipped and named), never a default;
compare_evals names the file of a binary summary.json or predictions.jsonl."""

import importlib.util

import pytest

from longact_pl.reporting import build_report
from longact_pl.reporting.collect import load_run
from tests.eval.test_paired_evals import _ruler_eval, _scores
from tests.helpers import ROOT
from tests.reporting.synthetic import build_multirun

_spec = importlib.util.spec_from_file_location("compare_evals", ROOT / "scripts" / "compare_evals.py")
_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_script)

BINARY = bytes(range(256)) * 4


def test_cut_or_binary_run_files_are_problems_named_with_the_file(tmp_path):
    root = build_multirun(tmp_path / "multirun")
    good = root / "0_grpo_saliency_seed0"
    assert load_run(good).complete
    text = (good / "config.yaml").read_text()
    (good / "config.yaml").write_text(text[: len(text) // 3])  # cut short: a run of unknown settings
    cut = load_run(good)
    assert not cut.complete and cut.config == {}
    assert any(p.startswith("config.yaml is incomplete (no ") for p in cut.problems)
    (good / "config.yaml").write_text("algo: [grpo\nmasking: {")  # not valid YAML
    assert any(p.startswith("config.yaml is not a readable config") for p in load_run(good).problems)
    other = root / "1_grpo_saliency_seed1"
    (other / "metrics.csv").write_bytes(BINARY)
    assert any(p.startswith("metrics.csv is not a readable CSV") for p in load_run(other).problems)
    report = build_report(root)  # one broken run does not stop the report over the others
    problems = {r.path.name: r.problems for r in report.incomplete}
    assert set(problems) >= {good.name, other.name}
    section = report.markdown.read_text().split("## Missing / crashed", 1)[1]
    assert f"`{good.name}`" in section and "metrics.csv is not a readable CSV" in section
    cells = {(k.algo, k.masking) for k in report.groups}
    assert ("grpo", "none") in cells and all(len(v) for v in report.groups.values())


def test_compare_evals_names_a_binary_summary_or_predictions_file(tmp_path, capsys):
    base = _ruler_eval(tmp_path / "base", _scores())
    other = _ruler_eval(tmp_path / "other", _scores())
    out = ["--out", str(tmp_path / "cmp"), "--n-boot", "200"]
    (other.parent / "predictions.jsonl").write_bytes(BINARY)
    with pytest.raises(SystemExit):
        _script.main([str(base), str(other), *out])
    err = capsys.readouterr().err
    assert f"{other.parent / 'predictions.jsonl'}: not a text JSONL file" in err and "corrupt" in err
    other.write_bytes(BINARY)
    with pytest.raises(SystemExit, match=rf"{other}: not a text file .*corrupt"):
        _script.main([str(base), str(other), *out])
