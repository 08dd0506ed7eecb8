import importlib.util
import math

import pytest

from longact_pl.reporting import build_report
from longact_pl.reporting.collect import collect
from tests.helpers import ROOT
from tests.reporting.synthetic import build_multirun

PNG = b"\x89PNG\r\n\x1a\n"
_spec = importlib.util.spec_from_file_location("report_script", ROOT / "scripts" / "report.py")
_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_script)
main = _script.main


def _table(markdown: str) -> dict[tuple[str, str], dict[str, str]]:
    """Rows of the Results table by (algo, masking), cells by header."""
    section = markdown.split("## Results", 1)[1].split("##", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(head, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]
    return {(r["algo"], r["masking"]): r for r in rows}


def _parse(cell: str) -> tuple[float, float | None]:
    mean, _, std = cell.split(" (n=")[0].partition(" ± ")
    return float(mean), float(std) if std else None


def test_table_holds_hand_computed_means_and_stds(tmp_path):
    root = build_multirun(tmp_path / "multirun")
    report = build_report(root, last_k=2)
    table = _table(report.markdown.read_text())
    assert set(table) == {("grpo", "saliency"), ("grpo", "none")}
    sal = table["grpo", "saliency"]
    assert sal["seeds"] == "3 (0, 1, 2)"
    # final reward = mean of the last 2 steps: 0.5, 0.7, 0.6 -> mean 0.6, sample std 0.1
    assert _parse(sal["reward (last 2)"]) == pytest.approx((0.6, 0.1))
    assert _parse(sal["val/acc step 0"]) == pytest.approx((0.25, 0.0))
    # final val/acc 0.5, 0.75, 1.0 -> 0.75 +- 0.25
    assert _parse(sal["val/acc final"]) == pytest.approx((0.75, 0.25))
    # paired gain per seed: 0.25, 0.5, 0.75 -> +0.5 +- 0.25
    assert sal["Δ val/acc"] == "+0.500 ± 0.250"
    # acc@512: 0.5, 0.5, 1.0 -> 2/3 +- sqrt(1/12); acc@1024: 0.5, 1, 1 -> 5/6 +- sqrt(1/12)
    assert _parse(sal["acc@512"]) == pytest.approx((2 / 3, math.sqrt(1 / 12)), abs=1e-3)
    assert _parse(sal["acc@1024"]) == pytest.approx((5 / 6, math.sqrt(1 / 12)), abs=1e-3)
    # RULER overall only in seeds 0 and 1: 40, 50 -> 45 +- 7.07, marked n=2
    assert sal["RULER avg"] == "45.0 ± 7.1 (n=2)"
    none = table["grpo", "none"]
    # one complete run: no std; the crashed seed (reward 1.0) does not leak into the mean
    assert none["seeds"] == "1 (0)"
    assert none["reward (last 2)"] == "0.300"
    assert (none["val/acc step 0"], none["val/acc final"], none["RULER avg"]) == ("0.250", "0.500", "-")
    assert none["Δ val/acc"] == "+0.250"


def test_missing_and_crashed_runs_are_listed(tmp_path):
    root = build_multirun(tmp_path / "multirun")
    report = build_report(root)
    problems = {r.path.name: r.problems for r in report.incomplete}
    assert problems == {
        "3_grpo_saliency_seed3": ["no metrics.csv", "no final/"],
        "5_grpo_none_seed1": ["no final/", "2 of 4 steps"],
        "6_grpo_none_seed2": ["no config.yaml", "no metrics.csv", "no final/"],
    }
    assert [(j.num, j.overrides) for j in report.never_started] == [(7, ["masking=none", "seed=3"])]
    section = report.markdown.read_text().split("## Missing / crashed", 1)[1]
    for name in problems:
        assert f"`{name}`" in section
    assert "job 7 (`masking=none seed=3`) | no folder: never started" in section
    assert "2 of 4 steps" in section


def test_plots_are_written_and_report_folder_is_not_a_run(tmp_path):
    root = build_multirun(tmp_path / "multirun")
    assert main([str(root)]) == 0
    out = root / "report"
    assert (out / "report.md").is_file()
    for name in ("reward_curves.png", "acc_vs_length.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
        assert f"]({name})" in (out / "report.md").read_text()
    # a second report over the same folder sees the same runs (report/ is not taken for a run)
    assert main([str(root), "--out", str(tmp_path / "again")]) == 0
    runs, _ = collect(root, exclude=tmp_path / "again")
    assert len(runs) == 7 and all("report" not in r.path.parts for r in runs)


def test_empty_folder_fails_cleanly(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
    assert "no run folders" in capsys.readouterr().err


def test_last_k_must_be_positive(tmp_path, capsys):
    root = build_multirun(tmp_path / "multirun")
    with pytest.raises(SystemExit):
        main([str(root), "--last-k", "0"])
    assert "--last-k must be >= 1" in capsys.readouterr().err
    assert not (root / "report").exists()
