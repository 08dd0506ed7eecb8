"""Experiment loggers that continue a run's history on resume (wandb is imported lazily, only here).

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts, so a resumed run lost every
row logged before the checkpoint. The loggers here keep it: :meth:`ResumableLogger.resume` is called by
``train.py`` with the checkpoint's ``global_step`` before anything is logged, and drops only what the
resumed run logs again (rows of steps at or after the checkpoint).
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Protocol, runtime_checkable

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from longact_pl.checkpoints.atomic import atomic_write_text


@runtime_checkable
class ResumableLogger(Protocol):
    """A logger that continues the history of the run it resumes."""

    def resume(self, step: int) -> None:
        """Forget what was logged at ``step`` or later (the resumed run logs it again)."""


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, but an existing ``metrics.csv`` is continued instead of deleted."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])

    def _check_log_dir_exists(self) -> None:
        """Keep whatever the run directory holds (Lightning would delete ``metrics.csv`` here)."""


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives a resume: new rows are appended to the old ones.

    Takes ``CSVLogger``'s arguments (``save_dir``, ``name``, ``version``, ...).
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The CSV writer (created on first use)."""
        if self._experiment is None:
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def resume(self, step: int) -> None:
        """Drop the rows logged at ``step`` or later (a kill after the last checkpoint left them).

        Rows without a step (none are written by Lightning) are kept.
        """
        path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        if not path.is_file():
            return
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames or [], list(reader)
        kept = [r for r in rows if not r.get("step") or int(float(r["step"])) < step]
        if len(kept) == len(rows):
            return
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_text(path, text.getvalue())


class ResumableTensorBoardLogger(TensorBoardLogger):
    """``TensorBoardLogger`` that continues a run.

    New event files go next to the old ones; events at the checkpoint's step or later from before the resume
    are hidden by TensorBoard (``purge_step``).

    Takes ``TensorBoardLogger``'s arguments.
    """

    def resume(self, step: int) -> None:
        """Have TensorBoard hide the old events at ``step`` or later."""
        if self._experiment is None:
            self._kwargs["purge_step"] = step


_WANDB_RUN_DIR = re.compile(r"^(?:offline-)?run-\d{8}_\d{6}-(?P<id>[a-z0-9]+)$")


def previous_wandb_id(save_dir: str | Path) -> str | None:
    """The id of the newest W&B run under ``<save_dir>/wandb`` (``None`` when there is none)."""
    folder = Path(save_dir) / "wandb"
    runs = sorted(
        (p for p in folder.glob("*run-*") if p.is_dir() and _WANDB_RUN_DIR.match(p.name)),
        key=lambda p: p.name.removeprefix("offline-"),
    )
    return _WANDB_RUN_DIR.match(runs[-1].name)["id"] if runs else None


def wandb_logger(project: str, name: str | None, save_dir: str, default_mode: str = "offline", **kwargs):
    """A Lightning ``WandbLogger``; offline unless ``WANDB_MODE`` is set.

    A run directory that already holds a W&B run (a resumed run: ``train.py`` refuses to start a new run in
    a used directory) continues that run: same id, ``resume="allow"``.

    Args:
        project: W&B project.
        name: Run name.
        save_dir: Folder for the ``wandb/`` files.
        default_mode: ``offline`` or ``online``, used when ``WANDB_MODE`` is unset.
        **kwargs: Passed to ``WandbLogger``.

    Raises:
        ImportError: With the install command, if wandb is missing.
    """
    try:
        import wandb
    except ImportError as err:
        raise ImportError("logger=wandb needs wandb: `.venv/bin/pip install -e '.[wandb]'`") from err
    from lightning.pytorch.loggers import WandbLogger

    if wandb.run is not None:  # the previous job of an in-process Hydra multirun: give this run its own
        wandb.finish()
    mode = os.environ.get("WANDB_MODE", default_mode)
    os.makedirs(save_dir, exist_ok=True)
    run_id = kwargs.pop("id", None) or previous_wandb_id(save_dir)
    return WandbLogger(
        project=project, name=name, save_dir=save_dir, offline=mode == "offline", id=run_id, **kwargs
    )
