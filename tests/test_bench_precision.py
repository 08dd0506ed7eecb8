"""Benchmarks say which precision each arm ran and whether the CPU has bf16 units; results.md shows both."""

import os

import pytest

from longact_pl.precision_choice import Bf16Support
from tests.helpers import ROOT, child_env

BENCH = ROOT / "scripts" / "bench"


@pytest.fixture
def bench(monkeypatch):
    """``scripts/bench`` importable (its scripts import ``_common`` by name), the CPU probe stubbed."""
    monkeypatch.syspath_prepend(str(BENCH))
    import _common
    import run_all

    monkeypatch.setattr(_common, "cpu_bf16_support", lambda: Bf16Support(False, "no AMX/AVX512_BF16"))
    monkeypatch.setattr(run_all, "bf16_units", _common.bf16_units)
    return _common, run_all


def test_the_precision_line_names_every_arm_and_the_cpus_bf16_units(bench, capsys):
    common, _ = bench
    line = common.precision_line({"ours": common.BF16_MIXED, "naive": common.FP32})
    assert line == "# precision: ours=bf16-mixed naive=32-true; cpu_bf16_units=no (no AMX/AVX512_BF16)"
    assert capsys.readouterr().out == line + "\n"


def test_results_md_shows_the_cpus_bf16_units_and_each_benchmarks_precisions(bench, tmp_path, monkeypatch):
    _, run_all = bench
    script = tmp_path / "bench_fake.py"  # a benchmark printing what every benchmark prints
    script.write_text(
        "import _common\n"
        "_common.precision_line({'ours': _common.BF16_MIXED, 'naive': _common.BF16_MIXED})\n"
        "_common.figure('fake_s[quick]', 2.0, 1.0, 2.0)\n"
    )
    monkeypatch.setattr(run_all, "HERE", tmp_path)
    monkeypatch.setitem(run_all.BENCHES, "fake", script.name)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(BENCH), child_env()["PYTHONPATH"]]))
    out = run_all.main(["--only", "fake", "--out", str(tmp_path / "results.md")])
    text = out.read_text()
    assert "- CPU bf16 units: no (no AMX/AVX512_BF16)" in text  # the stubbed probe, in the header
    # the benchmark's own line (its subprocess probes the real CPU) and its figure
    assert "# precision: ours=bf16-mixed naive=bf16-mixed; cpu_bf16_units=" in text
    assert "fake_s[quick] ratio=2.00" in text
