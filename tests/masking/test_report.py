import importlib.util
from pathlib import Path

import torch

from longact_pl.masking.export import write_masks

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "saliency_report.py"


def test_saliency_report_on_tiny_llama(tmp_path):
    spec = importlib.util.spec_from_file_location("saliency_report", SCRIPT)
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    history = [{"step": 0, "jaccard": None, "l1_share": 0.4}, {"step": 5, "jaccard": 0.8, "l1_share": 0.45}]
    write_masks(
        tmp_path / "run" / "final", {"m": torch.ones(4, dtype=torch.bool)}, {"ratio": 0.3, "history": history}
    )
    (tmp_path / "run" / "metrics.csv").write_text(
        "step,train/reward_mean,mask/grad_share_kept,mask/act_l1_share_kept\n"
        "0,0.5,0.62,0.55\n1,0.6,0.58,0.5\n1,,,\n"  # a validation row without telemetry
    )
    out = report.main(
        [
            "--model",
            "tiny_llama",
            "--lengths",
            "128",
            "256",
            "--samples",
            "1",
            "--out",
            str(tmp_path / "r"),
            "--run",
            str(tmp_path / "run"),
        ]
    )
    names = {
        "heatmap_q_proj.png",
        "heatmap_k_proj.png",
        "mask.png",
        "concentration.png",
        "drift.png",
        "telemetry.png",
        "short_vs_long.png",
        "concentration_by_length.png",
        "summary.md",
    }
    assert names <= {p.name for p in out.iterdir()}
    assert all((out / n).stat().st_size > 1000 for n in names if n.endswith(".png"))
    text = (out / "summary.md").read_text()
    assert (
        "| mask/grad_share_kept | 0.620 | 0.580 | 0.600 |" in text
        and "![telemetry.png](telemetry.png)" in text
    )
    assert "| rise 128->256 | q_proj |" in text and "| 256 | k_proj |" in text  # per length, not only a mean
    assert "| 1 | k_proj |" in text and "| 5 | 0.800 | 0.450 |" in text and "![drift.png](drift.png)" in text
