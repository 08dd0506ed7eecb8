"""``WeightSync``: tell an external rollout engine (vLLM) that the policy changed, and log the push time.

After every optimizer step (a step post-hook on the torch optimizers) the engine is marked stale; it then
pushes the policy's weights lazily, right before its next ``generate`` (training or validation). Several
optimizer steps in one RL step (``ppo_epochs`` / mini-batches) therefore cost one push.

``train.py`` adds this callback when the rollout engine has ``mark_stale`` (HF ``generate`` runs on the
policy itself and needs none).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from torch.utils.hooks import RemovableHandle


class WeightSync(pl.Callback):
    """Mark ``engine`` stale after each optimizer step; log ``rollout/sync_s`` and ``rollout/syncs``.

    Args:
        engine: A rollout engine with ``mark_stale()`` and, optionally, ``last_sync_s`` / ``syncs``.
    """

    def __init__(self, engine: Any) -> None:
        super().__init__()
        if not callable(getattr(engine, "mark_stale", None)):
            raise TypeError(f"{type(engine).__name__} has no mark_stale(); WeightSync is for engines")
        self.engine = engine
        self._handles: list[RemovableHandle] = []
        self._logged_syncs = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Register a step post-hook on every optimizer."""
        self._remove()
        for opt in trainer.optimizers:
            self._handles.append(opt.register_step_post_hook(lambda *_: self.engine.mark_stale()))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Log the duration of the push this step's rollout triggered (if one happened)."""
        syncs = int(getattr(self.engine, "syncs", 0))
        seconds = getattr(self.engine, "last_sync_s", None)
        if syncs > self._logged_syncs and seconds is not None:
            pl_module.log("rollout/sync_s", float(seconds), on_step=True, on_epoch=False, batch_size=1)
        pl_module.log("rollout/syncs", float(syncs), on_step=True, on_epoch=False, batch_size=1)
        self._logged_syncs = syncs

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remove the optimizer hooks."""
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
