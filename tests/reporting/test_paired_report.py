"""``scripts/report.py --paired`` on synthetic runs whose per-prompt differences are known."""

import importlib.util

import pytest

from longact_pl.reporting import build_report
from tests.helpers import ROOT
from tests.reporting.synthetic import build_multirun, build_paired_multirun, write_predictions

_spec = importlib.util.spec_from_file_location("report_script", ROOT / "scripts" / "report.py")
_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_script)
main = _script.main

PAIRS = [("saliency", "none"), ("saliency", "random"), ("random", "none")]


def _rows(section, step=4):
    return {(r.label, r.scope): r.interval for r in section.comparisons if r.step == step}


def test_paired_differences_equal_the_known_effects(tmp_path):
    root = build_paired_multirun(tmp_path / "multirun")
    report = build_report(root, paired=PAIRS, n_boot=2000)
    rows = _rows(report.paired)
    # prompts 0-8 (niah): none 000000111, saliency 111111111, random 111000000; the rest are equal
    assert rows["saliency - none", "all"].mean == pytest.approx(6 / 40)
    assert rows["saliency - none", "niah_multikey@2048"].mean == pytest.approx(6 / 24)
    assert rows["saliency - none", "qa_synthetic@4096"].mean == 0.0
    assert rows["saliency - random", "all"].mean == pytest.approx(6 / 40)
    assert rows["random - none", "all"].mean == pytest.approx(0.0)
    sal_none = rows["saliency - none", "all"]
    assert sal_none.excludes_zero and sal_none.lo < 6 / 40 < sal_none.hi
    assert (sal_none.n_seeds, sal_none.n_prompts) == (3, 40)
    assert not rows["random - none", "all"].excludes_zero
    # the never-trained family did not differ in any seed: a point interval at 0
    qa = rows["saliency - none", "qa_synthetic@4096"]
    assert (qa.lo, qa.hi) == (0.0, 0.0)
    # every eval point is compared; at step 0 the runs are identical
    assert _rows(report.paired, step=0)["saliency - none", "all"].hi == 0.0


def test_paired_section_in_the_markdown_with_marks_kl_and_plots(tmp_path):
    root = build_paired_multirun(tmp_path / "multirun")
    assert main([str(root), "--paired", "--n-boot", "500"]) == 0
    text = (root / "report" / "report.md").read_text()
    section = text.split("## Paired comparisons", 1)[1].split("## Missing", 1)[0]
    line = next(ln for ln in section.splitlines() if ln.startswith("| saliency - none | all |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == "+0.150" and cells[-1] == "✱" and cells[-2] == "3 x 40"
    assert not any(ln.startswith("| saliency - random | qa_synthetic@4096 |") and ln.endswith("✱ |")
                   for ln in section.splitlines())  # fmt: skip
    assert "| none | KL to reference | 0.00e+00 | 1.50e-02 | 3.50e-02 |" in section
    # step 0 is the same for every arm: (0 + 1 + ... ) / 40 prompts with p % 3 == 0 -> 14 of 40
    assert "| none | all | 0.350 |" in section
    assert "### Change from step 0" in section and "| saliency: step 4 - step 0 | all |" in section
    assert "KL (last 5)" in text.split("## Results", 1)[1].split("##", 1)[0]
    for png in ("paired_diffs.png", "acc_by_step.png"):
        assert (root / "report" / png).read_bytes()[:4] == b"\x89PNG"


def test_a_run_without_step0_borrows_it_and_mismatched_prompts_are_refused(tmp_path):
    root = build_paired_multirun(tmp_path / "multirun", skip_step0=("saliency", 2))
    report = build_report(root, paired=PAIRS[:1], n_boot=500)
    # validate_before_training is not a cell
    assert [len(runs) for runs in report.groups.values()] == [3, 3, 3]
    moved = {(r.label, r.scope): r.interval for r in report.paired.movement}
    assert moved["saliency: step 4 - step 0", "all"].n_seeds == 3  # seed 2 used the shared step 0
    # a run whose prompts differ (another data.val) cannot be paired: named, not silently compared
    write_predictions(root / "8_grpo_none_seed2", 4, [0.0] * 40, sha_salt="x")
    report = build_report(root, paired=PAIRS[:1], n_boot=500)
    assert not [r for r in report.paired.comparisons if r.step == 4]
    assert any("different token ids" in p for p in report.paired.problems)
    assert "### Not compared" in report.markdown.read_text()


def test_paired_on_a_multirun_without_records_still_reports(tmp_path):
    root = build_multirun(tmp_path / "multirun")
    assert main([str(root), "--paired"]) == 0
    text = (root / "report" / "report.md").read_text()
    assert "No run wrote per-prompt records" in text and "## Results" in text
    assert not (root / "report" / "paired_diffs.png").exists()


def test_bad_pair_is_refused(tmp_path, capsys):
    root = build_paired_multirun(tmp_path / "multirun")
    with pytest.raises(SystemExit):
        main([str(root), "--paired", "saliency"])
    assert "TREATED:CONTROL" in capsys.readouterr().err
