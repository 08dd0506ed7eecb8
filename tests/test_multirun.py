"""``python train.py -m ...``: a folder per job (config, metrics, final model) and a report over them."""

import csv
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from longact_pl.reporting import build_report
from tests.helpers import CONF, ROOT, TINY, child_env

PARITY = "data.reward._target_=tests.helpers.ParityReward"


def test_job_folder_name_stays_short_whatever_the_overrides():
    """Every TINY override, a list, a path with `/`: the job folder is still one short path component."""
    overrides = [*TINY[1:], "model=hf", "model.name_or_path=Qwen/Qwen3-4B", "data.train.lengths=[256,512]",
                 "algo=dapo", "masking=random", "seed=3"]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=/tmp/x", *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.job.num = 7
    assert OmegaConf.select(cfg, "hydra.sweep.subdir") == "7_dapo_random_seed3"


def _rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_two_by_two_multirun_then_report(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "train.py", "-m", "algo=grpo,dapo", "masking=saliency,none",
           f"hydra.sweep.dir={sweep}", *TINY, PARITY, "validate_before_training=true"]  # fmt: skip
    env = child_env()
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    # Hydra's basic sweeper order: algo outer, masking inner; seed 42 (train.yaml)
    jobs = ["0_grpo_saliency_seed42", "1_grpo_none_seed42", "2_dapo_saliency_seed42", "3_dapo_none_seed42"]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == jobs
    for name in jobs:
        run_dir = sweep / name
        algo, masking = name.split("_")[1:3]
        cfg = OmegaConf.load(run_dir / "config.yaml")
        assert cfg.algo.name == algo
        assert ("_target_" in cfg.masking) == (masking == "saliency")  # masking=none: the empty node
        assert (run_dir / "final" / "model.safetensors").is_file()
        assert (run_dir / "final" / "mask.safetensors").is_file() == (masking == "saliency")
        rows = _rows(run_dir)
        assert rows[0]["val/acc"] and rows[0]["step"] == "0" and not rows[0]["train/reward_mean"]
        assert len([r for r in rows if r["train/reward_mean"]]) >= 2
    assert out.count("val/acc: ") == 4  # each job prints its step-0 -> final accuracy
    report = build_report(sweep)
    cells = {(k.algo, k.masking): len(v) for k, v in report.groups.items()}
    assert cells == {
        ("grpo", "saliency"): 1,
        ("grpo", "none"): 1,
        ("dapo", "saliency"): 1,
        ("dapo", "none"): 1,
    }
    assert not report.incomplete and not report.never_started
    assert "| dapo | none | 1 (42) |" in report.markdown.read_text()
