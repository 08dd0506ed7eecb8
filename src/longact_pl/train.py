"""Compose the Hydra config into components and run ``Trainer.fit``.

Everything is built by ``hydra.utils.instantiate`` from ``_target_``; the order below is chosen so that
bad config values fail before anything heavy is loaded or anything is written to the run directory.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from longact_pl.checkpoints.atomic import atomic_write_text
from longact_pl.checkpoints.batch_boundary import BatchBoundary
from longact_pl.checkpoints.resume import (
    CheckpointInfo,
    check_checkpoint,
    check_resume_masking,
    check_resume_weights,
)
from longact_pl.checkpoints.run_config import RecordRunConfig, check_resume_settings
from longact_pl.config_check import check_combinations, check_types
from longact_pl.data.fit_check import check_prompt_fit
from longact_pl.eval.accuracy import source_task_names
from longact_pl.group_exit import process_group_closed_at_end
from longact_pl.kl_fp32 import check_kl_fp32_setting
from longact_pl.loggers import ResumableLogger
from longact_pl.memory.preflight import memory_preflight
from longact_pl.models.rope import check_folder_window, check_policy_window
from longact_pl.precision_choice import choose_precision
from longact_pl.ranks import launch_global_rank_is_zero
from longact_pl.rollout.async_loop import check_async
from longact_pl.rollout.weight_sync import WeightSync
from longact_pl.run_checks import check_run_settings
from longact_pl.run_end import (
    adopt_last_checkpoint,
    finish_run,
    last_checkpoint_path,
    validate_before,
)

log = logging.getLogger(__name__)

_RUN_MARKERS = ("metrics.csv", "final", "checkpoints", "config.yaml", "val_predictions")

# Checkpoints after the optimizer step are what we want; the run directory is checked by check_run_dir.
warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")
warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")


def check_run_dir(run_dir: Path, resuming: bool) -> None:
    """Refuse to write a new run over an existing one.

    Raises:
        FileExistsError: If ``run_dir`` already holds a run and we are not resuming from a checkpoint.
    """
    found = [m for m in _RUN_MARKERS if (run_dir / m).exists()]
    if found and not resuming:
        raise FileExistsError(
            f"run directory {run_dir} already holds a run ({', '.join(found)}); choose another "
            "hydra.run.dir, or pass ckpt_path=<checkpoint> to resume it"
        )


def check_trainer(trainer: DictConfig) -> None:
    """Refuse step limits that would train nothing or never stop.

    Raises:
        ValueError: Naming ``trainer.max_steps``.
    """
    steps, epochs = trainer.get("max_steps", -1), trainer.get("max_epochs")
    unbounded = epochs is None or epochs < 0
    if steps == 0 or steps < -1 or (steps == -1 and unbounded):
        raise ValueError(
            f"trainer.max_steps must be >= 1 (RL steps to train), got {steps}"
            + (" with trainer.max_epochs unbounded" if steps == -1 else "")
        )


def check_config(cfg: DictConfig) -> int | None:
    """:func:`check_run_config`; returns the ``global_step`` of ``cfg.ckpt_path`` (``None`` for a new run)."""
    info = check_run_config(cfg)
    return None if info is None else info.global_step


def check_run_config(cfg: DictConfig) -> CheckpointInfo | None:
    """Everything checkable before a component is built or the run directory touched.

    Checks the types of every component's fields, the step limit, unsupported option combinations, the
    model window, the fp32 KL check's setting and the checkpoint to resume from (readable, and trained with
    the settings a resume may not change: docs/reliability.md).

    Returns:
        What ``cfg.ckpt_path`` holds (``None`` for a new run), read once: ``run`` reuses it.
    """
    check_types(cfg)
    check_trainer(cfg.trainer)
    check_combinations(cfg)  # unsupported option combinations, before anything is built or written
    check_run_settings(cfg)
    strategy = cfg.trainer.get("strategy")
    sharded = isinstance(strategy, DictConfig) and str(strategy.get("_target_", "")).endswith("FSDP")
    check_kl_fp32_setting(int(cfg.module.get("kl_fp32_check_rows", 0)), cfg.trainer.precision, sharded)
    model = OmegaConf.to_container(cfg.model)  # a required '???' path stays a string: not a folder
    check_folder_window(
        model.get("name_or_path"), model.get("rope_scaling"), cfg.rollout.get("max_model_len")
    )
    if cfg.get("ckpt_path") is None:
        return None
    info = check_checkpoint(cfg.ckpt_path)
    masking = bool(cfg.get("masking")) and "_target_" in cfg.masking  # masking=none: no callback
    rebuild = bool(masking and cfg.masking.get("rebuild_masks", False))
    check_resume_masking(info, cfg.ckpt_path, masking, rebuild)
    check_resume_settings(info.config, info.global_step, cfg)
    return info


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """Instantiate ``cfg.callbacks.*`` and the masking callback (``masking=none`` adds nothing)."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    if cfg.get("masking") and "_target_" in cfg.masking:
        callbacks.append(instantiate(cfg.masking))
    return callbacks


def check_callbacks(callbacks: list[L.Callback], model) -> None:
    """Let callbacks whose options depend on the model check it (``SaliencyMask.check_model``).

    Called right after the model is loaded, so a bad combination fails before the run directory is written.
    """
    for callback in callbacks:
        check = getattr(callback, "check_model", None)
        if callable(check):
            check(model)


def rollout_callbacks(rollout) -> list[L.Callback]:
    """``WeightSync`` for engines that hold their own copy of the weights (they have ``mark_stale``)."""
    return [WeightSync(rollout)] if callable(getattr(rollout, "mark_stale", None)) else []


def build_loggers(cfg: DictConfig) -> list:
    """Instantiate every logger under ``cfg.logger``."""
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]


def build_light(cfg: DictConfig) -> tuple:
    """The components that load nothing: ``(algorithm, rollout engine, correction, callbacks)``.

    (A sampler whose log-probs would not describe what the trainer computes was refused earlier, from the
    config alone: ``config_check.check_combinations``.)
    """
    algorithm = instantiate(cfg.algo)
    rollout = instantiate(cfg.rollout)
    correction = instantiate(cfg.correction) if cfg.get("correction") else None
    check_async(rollout, correction, algorithm)  # rollout.mode=async: a correction, no dynamic sampling
    return algorithm, rollout, correction, build_callbacks(cfg) + rollout_callbacks(rollout)


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Train as configured; return the final logged metrics.

    Args:
        cfg: The composed config (``conf/train.yaml``).
        run_dir: Hydra's output directory for this run.
    """
    with process_group_closed_at_end():  # a gloo group left open can abort the exit of a finished run
        return _run(cfg, run_dir)


def _run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """:func:`run`, inside the process group's lifetime."""
    # DDP/FSDP: every rank runs this in the same run directory (Lightning re-runs the script for the other
    # ranks of a node; torchrun / srun start them all); global rank 0 alone checks and writes it
    main_process = launch_global_rank_is_zero()
    choose_precision(cfg, announce=main_process)  # trainer.precision=auto -> what this hardware runs fast
    info = check_run_config(cfg)  # the checkpoint to resume from, read once (mmap): its step, weights' shapes
    resume_step = None if info is None else info.global_step
    memory_preflight(cfg, announce=main_process)  # the memory plan; refuses a run that would not fit
    if main_process:
        check_run_dir(run_dir, resuming=resume_step is not None)
    L.seed_everything(cfg.seed, workers=True)
    # Cheap components first: invalid values fail here, before loading a model or writing a file.
    algorithm, rollout, correction, callbacks = build_light(cfg)
    callbacks += [RecordRunConfig(OmegaConf.to_container(cfg, resolve=True)), BatchBoundary()]  # resume aids
    loaded = instantiate(cfg.model)
    check_callbacks(callbacks, loaded.model)
    check_policy_window(
        getattr(rollout, "max_model_len", None), loaded.model.config
    )  # before the engine starts
    datamodule = instantiate(cfg.data, tokenizer=loaded.tokenizer)
    check_prompt_fit(datamodule, loaded.model, rollout.max_new_tokens)  # the model's window, cut prompts
    module = instantiate(
        cfg.module,
        policy=loaded.model,
        tokenizer=loaded.tokenizer,
        algorithm=algorithm,
        rollout=rollout,
        correction=correction,
        reward_fn=datamodule.reward,
        val_tasks=source_task_names(datamodule.val) if datamodule.val is not None else [],
        export_dir=str(run_dir / "final"),
        predictions_dir=str(run_dir / "val_predictions"),
    )
    if info is not None:  # weights of another shape fail here, naming them, not in trainer.fit
        check_resume_weights(info, cfg.ckpt_path, module)
    loggers = build_loggers(cfg)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    check_model = getattr(trainer.strategy, "check_model", None)
    if callable(check_model):  # settings the strategy cannot run with this model (sequence parallel sizes)
        check_model(loaded.model)
    # Every check passed: only now is anything in the run directory written or changed.
    if trainer.is_global_zero:  # the global rank, on every node (LOCAL_RANK is 0 on each)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))  # never cut short
    for lg in loggers:
        if resume_step is not None and isinstance(lg, ResumableLogger):
            lg.resume(resume_step)  # keep the history before the checkpoint, drop what is logged again
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    before = {}
    validates = datamodule.val is not None
    try:
        # a checkpoint of step 0 (stopped during the step-0 validation) validates again: its rows were dropped
        if cfg.get("validate_before_training") and validates and not resume_step:
            before = validate_before(trainer, module, datamodule)  # a SIGTERM in it stops before step 1
        # Checkpoints are read as plain tensors and containers: no code in a checkpoint ever runs.
        # a step-0 checkpoint (stopped before the first step) holds the start: the run starts again from it
        fit_from = cfg.get("ckpt_path") if resume_step else None
        if resume_step == 0:
            adopt_last_checkpoint(trainer)  # its last.ckpt is overwritten, not joined by last-v1.ckpt
        trainer.fit(module, datamodule=datamodule, ckpt_path=fit_from, weights_only=True)
        final = finish_run(trainer, module, datamodule, validates)
    except SIGTERMException:
        # Lightning's SystemExit has no code (exit 0): a pre-empted run must not look finished
        code = int(cfg.get("sigterm_exit_code", 143))
        last = last_checkpoint_path(trainer)
        resume = f"resume with ckpt_path={last}" if last.exists() else "no checkpoint was written"
        log.warning("stopped by SIGTERM at step %d (%s); exit code %d", trainer.global_step, resume, code)
        raise SystemExit(code) from None
    for key in sorted(k for k in final if k.startswith("val/acc")):
        start = before.get(f"{key}@step0")
        log.info("%s: %s -> %.3f", key, "n/a" if start is None else f"{start:.3f}", final[key])
    return {**before, **final}
