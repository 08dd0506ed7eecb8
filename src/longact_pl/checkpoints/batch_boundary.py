"""A checkpoint written while a batch is in flight (Ctrl-C, an exception) records the batch boundary it holds.

Lightning's ``save_on_exception`` checkpoint stores the loop counters as they are when the exception hits:
the interrupted batch counts as started, so a resume skips it and every later step is logged one step late
(``metrics.csv`` labels steps 2 and 3 as 3 and 4, the end validation is written as ``step_3``), although the
weights are those from before the batch. :class:`BatchBoundary` rewrites the counters of such a checkpoint:

- no optimizer step of the batch ran: the checkpoint holds the state before the batch, and the batch is
  marked not started (the resume runs it again: the uninterrupted run's steps, labels and data order);
- some ran (``ppo_epochs > 1``, mini-batches): the weights hold part of the batch, which is marked done (the
  resume goes on with the next batch) and a warning says how many optimizer steps of it were taken.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L

log = logging.getLogger(__name__)

_PROGRESS = "epoch_loop.batch_progress"


class BatchBoundary(L.Callback):
    """Makes every checkpoint resume at a batch boundary (see the module docstring)."""

    def __init__(self) -> None:
        self._step_at_start: int | None = None

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        """Note the optimizer steps done before the batch."""
        self._step_at_start = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        """The batch is done: checkpoints from here on are at its end (Lightning's own counters)."""
        self._step_at_start = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """Rewind (or complete) the batch counters of a checkpoint written inside a batch."""
        fit = checkpoint.get("loops", {}).get("fit_loop", {})
        progress = fit.get(_PROGRESS)
        if self._step_at_start is None or not isinstance(progress, dict):
            return
        total = progress.get("total", {})
        if total.get("started", 0) <= total.get("processed", 0):  # not inside a training step
            return
        taken = trainer.global_step - self._step_at_start
        for part in ("total", "current"):
            counts = progress.get(part)
            if not isinstance(counts, dict):
                continue
            if taken == 0:  # the state before the batch: run it again on resume
                counts["ready"] = counts["started"] = counts["processed"] = counts["completed"]
            else:  # part of the batch is in the weights: go on after it
                counts["processed"] = counts["completed"] = counts["started"]
        if taken:
            state = fit.get("epoch_loop.state_dict", {})
            if "_batches_that_stepped" in state:
                state["_batches_that_stepped"] += 1
            log.warning(
                "checkpoint written inside an RL step after %d of its optimizer steps: a resume goes on with "
                "the next batch (the interrupted one is only partly trained)",
                taken,
            )
