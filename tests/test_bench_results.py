import importlib.util

from tests.helpers import ROOT


def test_run_all_rewrites_the_cpu_figures_and_keeps_the_gpu_section(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "scripts" / "bench" / "run_all.py")
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    out = tmp_path / "results.md"
    gpu = "## GPU acceptance (scripts/gpu_check.sh)\n\ngrpo_step_32k_mfu value=not yet measured"
    out.write_text(f"# Long-context benchmarks\n\n## prefix\n\n```\nold ratio=1 a=1 b=1\n```\n\n{gpu}")
    monkeypatch.setattr(run_all, "run", lambda *args: (["new ratio=2 a=1 b=2"], ["# sizes"], 1.0, ""))
    run_all.main(["--only", "prefix", "--out", str(out)])
    text = out.read_text()
    assert "new ratio=2" in text and "old ratio" not in text
    assert text.endswith(gpu) and text.count("## GPU acceptance") == 1
