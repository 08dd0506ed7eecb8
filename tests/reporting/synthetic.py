"""A hand-written multirun directory with known numbers (no training involved)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

COLUMNS = ["epoch", "step", "train/reward_mean", "val/acc", "val/acc/512", "val/acc/1024"]
MAX_STEPS = 4


def config(run_dir: Path, seed: int, masking: str, ratio: float = 0.3) -> dict:
    """A resolved config as train.py writes it, reduced to what the report reads (plus seed/path noise)."""
    mask = {}
    if masking != "none":
        selector = {"saliency": "TopK", "random": "RandomK", "inverse": "BottomK"}[masking]
        mask = {
            "_target_": "longact_pl.masking.SaliencyMask",
            "selector": {"_target_": f"longact_pl.masking.selection.{selector}"},
            "ratio": ratio,
            "seed": seed,
        }
    return {
        "seed": seed,
        "model": {"_target_": "longact_pl.models.tiny.tiny_llama"},
        "rollout": {"group_size": 4},
        "module": {"optimizer": {"lr": 1e-6}},
        "algo": {"_target_": "longact_pl.algos.GroupPolicyGradient", "name": "grpo", "kl_coef": 0.04},
        "masking": mask,
        "trainer": {"max_steps": MAX_STEPS, "default_root_dir": str(run_dir)},
        "data": {"seed": seed, "train": {"seed": seed, "lengths": [1024]}},
        "paths": {"output_dir": str(run_dir)},
        "callbacks": {"model_checkpoint": {"dirpath": f"{run_dir}/checkpoints"}},
    }


def write_run(
    run_dir: Path,
    cfg: dict,
    rewards: list[float] | None,
    start: tuple[float, float, float] | None = (0.25, 0.25, 0.25),
    final: tuple[float, float, float] | None = None,
    finished: bool = True,
    ruler: float | None = None,
) -> Path:
    """Write config.yaml, metrics.csv (val at step 0, one train row per reward, val at the end), final/.

    ``start`` / ``final``: ``(val/acc, val/acc/512, val/acc/1024)``; ``rewards=None``: no metrics.csv.
    """
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    if rewards is not None:
        rows = []
        if start is not None:
            rows.append(
                {
                    "epoch": 0,
                    "step": 0,
                    "val/acc": start[0],
                    "val/acc/512": start[1],
                    "val/acc/1024": start[2],
                }
            )
        rows += [{"epoch": 0, "step": i, "train/reward_mean": r} for i, r in enumerate(rewards)]
        if final is not None:
            last = len(rewards) - 1
            rows.append(
                {
                    "epoch": 0,
                    "step": last,
                    "val/acc": final[0],
                    "val/acc/512": final[1],
                    "val/acc/1024": final[2],
                }
            )
        with (run_dir / "metrics.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    if finished:
        (run_dir / "final").mkdir()
        (run_dir / "final" / "model.safetensors").write_bytes(b"")
    if ruler is not None:
        (run_dir / "ruler").mkdir()
        (run_dir / "ruler" / "summary.json").write_text(json.dumps({"benchmark": "ruler", "overall": ruler}))
    return run_dir


def build_multirun(root: Path) -> Path:
    """``-m algo=grpo masking=saliency,none seed=0,1,2,3``: 8 jobs, 4 complete, 4 missing or crashed.

    Job numbers follow Hydra's basic sweeper (masking outer, seed inner):
      0-2  saliency seeds 0-2: complete (RULER summaries for seeds 0 and 1)
      3    saliency seed 3: crashed before metrics.csv (config.yaml only)
      4    none seed 0: complete
      5    none seed 1: crashed after 2 of 4 steps (no final/); its large reward must not reach the table
      6    none seed 2: the launcher made the folder, the job wrote nothing
      7    none seed 3: never started (no folder)
    """
    root.mkdir(parents=True, exist_ok=True)
    multirun = {
        "hydra": {
            "sweeper": {
                "_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                "params": None,
            },
            "overrides": {
                "task": ["algo=grpo", "masking=saliency,none", "seed=0,1,2,3", "trainer.max_steps=4"]
            },
        }
    }
    (root / "multirun.yaml").write_text(yaml.safe_dump(multirun))

    def d(num: int, masking: str, seed: int) -> Path:
        return root / f"{num}_grpo_{masking}_seed{seed}"

    write_run(d(0, "saliency", 0), config(d(0, "saliency", 0), 0, "saliency"), [0.0, 0.2, 0.4, 0.6],
              final=(0.5, 0.5, 0.5), ruler=40.0)  # fmt: skip
    write_run(d(1, "saliency", 1), config(d(1, "saliency", 1), 1, "saliency"), [0.1, 0.3, 0.5, 0.9],
              final=(0.75, 0.5, 1.0), ruler=50.0)  # fmt: skip
    write_run(d(2, "saliency", 2), config(d(2, "saliency", 2), 2, "saliency"), [0.0, 0.1, 0.6, 0.6],
              final=(1.0, 1.0, 1.0))  # fmt: skip
    write_run(d(3, "saliency", 3), config(d(3, "saliency", 3), 3, "saliency"), None, finished=False)
    write_run(
        d(4, "none", 0), config(d(4, "none", 0), 0, "none"), [0.0, 0.0, 0.2, 0.4], final=(0.5, 0.5, 0.5)
    )
    write_run(d(5, "none", 1), config(d(5, "none", 1), 1, "none"), [1.0, 1.0], finished=False)
    d(6, "none", 2).mkdir()
    return root


# The paired multirun: 40 held-out prompts, 24 of one trained family and 16 of a never-trained one.
PAIRED_SCOPES = [("niah_multikey", 2048)] * 24 + [("qa_synthetic", 4096)] * 16
PAIRED_STEPS = (0, 2, 4)


def write_predictions(run_dir: Path, step: int, scores: list[float], sha_salt: str = "") -> Path:
    """``val_predictions/step_<step>.jsonl`` with one row per :data:`PAIRED_SCOPES` prompt."""
    folder = run_dir / "val_predictions"
    folder.mkdir(exist_ok=True)
    path = folder / f"step_{step}.jsonl"
    with path.open("w") as f:
        for index, ((task, length), score) in enumerate(zip(PAIRED_SCOPES, scores, strict=True)):
            row = {"id": f"{task}/{length}/{index}", "index": index, "task": task, "target_length": length,
                   "prompt_sha": f"sha{index}{sha_salt}", "step": step, "score": score}  # fmt: skip
            f.write(json.dumps(row) + "\n")
    return path


def paired_scores(masking: str, seed: int, step: int) -> list[float]:
    """Known per-prompt scores: a shared start; at later steps a seed-dependent base pattern in which
    prompts 0-8 (niah) score 0 0 0 0 0 0 1 1 1 under none, all 1 under saliency, 1 1 1 0 0 0 0 0 0 under
    random.

    So at steps 2 and 4 (every seed): saliency - none = 6/40 (niah 6/24, qa 0), random - none = 0 (+3 and
    -3 prompts), saliency - random = 6/40; step 0 is identical in every run.
    """
    if step == 0:
        return [float(p % 3 == 0) for p in range(len(PAIRED_SCOPES))]
    scores = [float((p * 7 + seed * 3 + step) % 5 < 2) for p in range(len(PAIRED_SCOPES))]
    forced = {"none": "000000111", "saliency": "111111111", "random": "111000000"}[masking]
    return [float(c) for c in forced] + scores[9:]


def build_paired_multirun(root: Path, skip_step0: tuple[str, int] | None = None) -> Path:
    """``masking=saliency,random,none seed=0,1,2``, 4 steps, eval at 0, 2, 4, per-prompt records.

    ``train/kl`` is ``0.01 * (step + 1)`` in every run. ``skip_step0=(masking, seed)``: that run has no
    step-0 file (as with ``validate_before_training=false``).
    """
    root.mkdir(parents=True, exist_ok=True)
    num = 0
    for masking in ("saliency", "random", "none"):
        for seed in (0, 1, 2):
            run_dir = root / f"{num}_grpo_{masking}_seed{seed}"
            cfg = config(run_dir, seed, masking)
            cfg["validate_before_training"] = (masking, seed) != skip_step0  # does not split a cell
            write_run(run_dir, cfg, [0.5] * MAX_STEPS, final=(0.5, 0.5, 0.5))
            _add_kl(run_dir)
            for step in PAIRED_STEPS:
                if (masking, seed) == skip_step0 and step == 0:
                    continue
                write_predictions(run_dir, step, paired_scores(masking, seed, step))
            num += 1
    return root


def _add_kl(run_dir: Path) -> None:
    """Rewrite metrics.csv with ``train/kl = 0.01 * (step + 1)`` on every training row."""
    path = run_dir / "metrics.csv"
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        if row.get("train/reward_mean"):
            row["train/kl"] = 0.01 * (int(row["step"]) + 1)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*COLUMNS, "train/kl"])
        writer.writeheader()
        writer.writerows(rows)
