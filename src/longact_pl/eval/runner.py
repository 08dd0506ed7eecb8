"""Compose the ``evaluate.py`` config into a model, a rollout engine and a benchmark, run it, write reports.

Order: the field types and the run directory are checked, then the benchmark is built (a bad data path or
field fails here), then the engine and the model are loaded; only then is anything written.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from longact_pl.config_check import check_types
from longact_pl.eval.context import EvalContext, PredictionWriter

log = logging.getLogger(__name__)

EVAL_MARKERS = ("predictions.jsonl", "summary.json", "summary.md", "config.yaml")


def check_eval_dir(run_dir: Path) -> None:
    """Refuse to write an evaluation over an earlier one (or over a training run's files).

    Raises:
        FileExistsError: If ``run_dir`` already holds predictions, a summary or a config.
    """
    found = [m for m in EVAL_MARKERS if (run_dir / m).exists()]
    if found:
        raise FileExistsError(
            f"run directory {run_dir} already holds results ({', '.join(found)}); choose another "
            "hydra.run.dir (the default, outputs/eval/<date>_<time>, is always new)"
        )


def resolve_device(name: str | None) -> torch.device:
    """``None`` means CUDA when available, else CPU."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_name(cfg: DictConfig) -> str:
    """A short name of the evaluated model for tables: its path, or its loader's name."""
    model = cfg.get("model") or {}
    return str(model.get("name_or_path") or str(model.get("_target_", "model")).rsplit(".", 1)[-1])


def build(node: DictConfig):
    """``instantiate(node)``, re-raising a component's own input error (file, field, value) unwrapped.

    Raises:
        ValueError: If a required (``???``) field is not set, naming it.
    """
    try:
        return instantiate(node)
    except MissingMandatoryValue as err:
        raise ValueError(
            f"{err.full_key} is required; set it on the command line, e.g. {err.full_key}=..."
        ) from None
    except InstantiationException as err:
        if isinstance(err.__cause__, (ValueError, OSError, ImportError)):
            raise err.__cause__ from None
        raise


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Evaluate as configured; return the summary (also written to ``run_dir/summary.json``).

    Args:
        cfg: The composed config (``conf/eval.yaml``).
        run_dir: Hydra's output directory for this run.
    """
    check_types(cfg)  # field types (a scalar for a list becomes a one-element list) before anything is built
    check_eval_dir(run_dir)
    torch.manual_seed(cfg.seed)
    benchmark = build(cfg.eval)
    engine = build(cfg.rollout)
    loaded = build(cfg.model)
    policy = loaded.model.to(resolve_device(cfg.get("device"))).eval()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    ctx = EvalContext(
        engine=engine,
        policy=policy,
        tokenizer=loaded.tokenizer,
        writer=PredictionWriter(run_dir / "predictions.jsonl"),
        model_name=model_name(cfg),
        progress=bool(cfg.get("progress", True)),
    )
    summary = benchmark.run(ctx)
    paths = benchmark.write_report(summary, run_dir)
    log.info("\n%s", (run_dir / "summary.md").read_text())
    log.info("wrote %s", ", ".join(str(p) for p in [ctx.writer.path, *paths]))
    return summary
