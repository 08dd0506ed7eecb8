"""A training progress bar counted in RL steps (optimizer steps), not epochs.

Lightning's bars count batches per epoch and label them ``Epoch 0/-2`` when ``max_epochs=-1``; an RL run is
bounded by ``trainer.max_steps``, and a skipped step (DAPO) does not advance it.
"""

from __future__ import annotations

import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    r"""``step 3/16`` with the progress-bar metrics (reward, ``val_acc``); one bar for the whole run.

    In a log file (stdout not a terminal) the bar is off: its redraws end in ``\r``, not a newline, so each
    step's log line would be glued to the end of a bar line (``...reward=0.250]step 2/2 reward ...``), and
    ``tail`` / ``grep`` users read the per-step log lines (:class:`~longact_pl.step_log.StepLog`) instead.

    Args:
        refresh_rate: Steps between redraws.
        in_files: Draw the bar when stdout is not a terminal too.
    """

    def __init__(self, refresh_rate: int = 1, in_files: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate)
        terminal = bool(getattr(sys.stdout, "isatty", lambda: False)())  # Lightning draws on stdout
        if not (terminal or in_files):
            self.disable()

    def _reset_to_steps(self, trainer: L.Trainer) -> None:
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps if trainer.max_steps > 0 else None)
        bar.n = bar.initial = trainer.global_step  # a resumed run starts where its checkpoint ended
        bar.set_description("step")
        bar.refresh()

    def on_train_start(self, trainer: L.Trainer, *_: Any) -> None:
        """Open the bar, counting optimizer steps up to ``trainer.max_steps``."""
        super().on_train_start(trainer)
        self._reset_to_steps(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        """Keep counting across epochs (Lightning would restart at 0 with the epoch as the label)."""

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Show the optimizer steps done and the latest metrics."""
        bar, step = self.train_progress_bar, trainer.global_step
        due = step % self.refresh_rate == 0 or step == trainer.max_steps
        if bar is not None and self.is_enabled and due:
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Refresh the metrics; the bar stays open for the next epoch."""
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
