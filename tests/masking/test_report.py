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
    out = report.main(
        [
            "--model",
            "tiny_llama",
            "--lengths",
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
        "summary.md",
    }
    assert names <= {p.name for p in out.iterdir()}
    assert all((out / n).stat().st_size > 1000 for n in names if n.endswith(".png"))
    text = (out / "summary.md").read_text()
    assert "| 1 | k_proj |" in text and "| 5 | 0.800 | 0.450 |" in text and "![drift.png](drift.png)" in text
