"""The edges of ``trainer.fit``: the step-0 validation before it, the final validation and export after it.

Lightning counts validation in RL batches (``val_check_interval``) and stops at ``max_steps`` optimizer
steps; with ``module.learner.ppo_epochs > 1``, several mini-batches or a skipped step (DAPO) the two drift
apart, and the last in-fit validation scores an earlier policy or never runs. A resumed run whose checkpoint
is already at ``max_steps`` (pre-empted after its last step) trains nothing and Lightning never calls
``on_train_end``. :func:`finish_run` therefore validates the final weights unless that exact step was
validated (in this process, or by the run that wrote ``val_predictions/step_<k>.jsonl``) and exports them
unless ``final/`` holds them.

A pre-emption (SIGTERM) during the step-0 validation stops the run at the next safe point: the start of
``fit``, with a step-0 checkpoint to resume from (:func:`validate_before`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """Where ``last.ckpt`` goes (the ``ModelCheckpoint`` folder, else ``<root>/checkpoints``)."""
    callback = trainer.checkpoint_callback
    folder = getattr(callback, "dirpath", None) or Path(trainer.default_root_dir) / "checkpoints"
    return Path(folder) / "last.ckpt"


def adopt_last_checkpoint(trainer: L.Trainer) -> None:
    """Let ``ModelCheckpoint`` overwrite an existing (step-0) ``last.ckpt`` instead of adding ``-v1``."""
    path, callback = last_checkpoint_path(trainer), trainer.checkpoint_callback
    if path.is_file() and hasattr(callback, "last_model_path"):
        callback.last_model_path = str(path)


class StopAtStart(L.Callback):
    """Writes ``last.ckpt`` as ``fit`` starts (step 0, optimizer ready), then stops as a pre-emption."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save, then raise ``SIGTERMException`` (``train.py`` exits with ``sigterm_exit_code``)."""
        trainer.save_checkpoint(last_checkpoint_path(trainer))
        raise SIGTERMException


def validate_before(trainer: L.Trainer, module: L.LightningModule, datamodule) -> dict[str, float]:
    """The step-0 validation (``<metric>@step0``); a SIGTERM during it stops the run as ``fit`` starts.

    Lightning notes the signal and, on the last validation batch, lets the run go on; ``fit`` then resets
    the flag. Here the signal adds :class:`StopAtStart`, so the run stops before its first step with a
    checkpoint whose resume validates again.
    """
    try:
        result = trainer.validate(module, datamodule=datamodule)
    except SIGTERMException:  # signalled before the last validation batch
        result = []
        trainer.callbacks.append(StopAtStart())
    else:
        if trainer.received_sigterm:
            log.warning("SIGTERM during the step-0 validation: stopping before the first training step")
            trainer.callbacks.append(StopAtStart())
    return {f"{k}@step0": float(v) for k, v in (result[0] if result else {}).items()}


def _validated(module: Any, step: int) -> bool:
    """Whether the weights of ``step`` were validated (now, or by the run that wrote its predictions)."""
    if step in getattr(module, "validated_steps", set()):
        return True
    folder = getattr(module, "predictions_dir", None)
    return folder is not None and (Path(folder) / f"step_{step}.jsonl").is_file()


def _everywhere(module: Any, flag: bool) -> bool:
    """Whether ``flag`` holds on every rank.

    Ranks decide together: validation and export are collectives, and a node-local disk may show a file to
    one rank only.
    """
    dist = getattr(module, "dist", None)
    return bool(dist.min(int(flag))) if dist is not None else flag


def finish_run(trainer: L.Trainer, module: Any, datamodule, validates: bool) -> dict[str, float]:
    """After ``fit``: validate the final weights unless done, export them unless done; the final metrics.

    Args:
        trainer: The trainer that ran ``fit``.
        module: The ``LongActModule`` (``validated_steps``, ``predictions_dir``, ``export()``).
        datamodule: For the validation.
        validates: The run has a validation set.

    Raises:
        SIGTERMException: A SIGTERM during the final validation (``last.ckpt`` holds the final step).
    """
    final = {k: float(v) for k, v in trainer.callback_metrics.items()}
    step = trainer.global_step
    if validates and not _everywhere(module, _validated(module, step)):
        log.info("validating the final weights (step %d): the last validation did not score them", step)
        loop = trainer.fit_loop.epoch_loop
        loop._batches_that_stepped -= 1  # logged at the last training row's step, as an in-fit validation
        try:
            result = trainer.validate(module, datamodule=datamodule)
        finally:
            loop._batches_that_stepped += 1
        if trainer.received_sigterm:
            raise SIGTERMException
        final.update({k: float(v) for k, v in (result[0] if result else {}).items()})
    export = getattr(module, "export", None)
    if callable(export) and not _everywhere(module, getattr(module, "exported", True)):
        export()  # a resume at max_steps trains nothing: Lightning never calls on_train_end
    return final
