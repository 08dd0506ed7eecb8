"""``SaliencyMask``: the LongAct Lightning callback (calibrate, mask the optimizer step, refresh, export).

Contract with the LightningModule (manual optimization):

* ``pl_module.policy``: the Hugging Face causal LM being trained.
* ``pl_module.stats_token_mask``: a bool ``[B, T]`` tensor of valid tokens, set right before each policy
  training forward and reset to ``None`` right after (only needed when ``refresh_every > 0``).
* ``pl_module.export_dir``: a ``pathlib.Path`` (or ``None``) where the masks are written at the end of fit.
* ``trainer.datamodule.calibration_prompts(n) -> list[list[int]]`` (or the same method on the module).

Inside ``LightningOptimizer.step()`` Lightning 2.6 runs (``Precision._after_closure``) the callbacks'
``on_before_optimizer_step`` first, then the module's (where it clips gradients), then the torch update, so
masking the gradient here means the clip norm sees the masked gradient.

Data parallel (DDP, FSDP2): each rank calibrates on its share of the prompts, the statistics are summed over
ranks before top-k (so every rank builds the single-process mask, which is also broadcast from rank 0), the
freezer works on each rank's local row block of sharded weights, and checkpoints hold the full masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from longact_pl.masking.apply import RowFreezer
from longact_pl.masking.calibrate import collect_stats
from longact_pl.masking.export import write_masks
from longact_pl.masking.metrics import jaccard, l1_share
from longact_pl.masking.selection import Selector, TopK, build_masks, check_scope
from longact_pl.masking.sharding import shard_prompts
from longact_pl.masking.stats import ChannelStats, StatsCollector, check_statistic
from longact_pl.masking.targets import Target, find_targets, head_dim_of
from longact_pl.masking.units import check_unit

OTHERS = ("dense", "frozen")


def _mean(values: Sequence[float]) -> float:
    return sum(values) / max(len(values), 1)


class SaliencyMask(pl.Callback):
    """Train only the salient rows of the target projections (LongAct); everything else stays exact.

    Attributes:
        history: One entry per mask build: ``{"step", "jaccard", "l1_share"}`` (jaccard is ``None`` at
            calibration).
    """

    def __init__(
        self,
        selector: Selector | None = None,
        targets: Sequence[str] = ("q_proj", "k_proj"),
        ratio: float = 0.3,
        statistic: str = "mean_abs",
        unit: str = "channel",
        scope: str = "per_matrix",
        others: str = "dense",
        measure_at: str = "proj",
        calib_samples: int = 8,
        refresh_every: int = 0,
        ema: float = 0.9,
        seed: int = 0,
    ) -> None:
        """Configure the mask.

        Args:
            selector: Picks units from scores (``TopK`` = LongAct, ``BottomK`` = inverse, ``RandomK``).
            targets: Suffixes of the ``nn.Linear`` module names to mask (e.g. ``q_proj``, ``k_proj``).
            ratio: Kept fraction per matrix (or per target name with ``scope=global``), in ``(0, 1]``.
            statistic: Channel score over tokens: ``mean_abs``, ``rms`` or ``max_abs``.
            unit: ``channel``, ``rope_pair`` (d and d+head_dim/2 kept together) or ``head``.
            scope: ``per_matrix`` or ``global`` (rank across layers within a target name).
            others: ``dense`` (non-target parameters train normally) or ``frozen`` (they get no update).
            measure_at: ``proj`` (projection output) or ``norm`` (Qwen3 ``q_norm``/``k_norm`` output).
            calib_samples: Long prompts run before the first step to build the initial mask.
            refresh_every: Rebuild the mask every this many optimizer steps from training forwards
                (0 = static mask).
            ema: Smoothing of refresh statistics: ``score = ema * score + (1 - ema) * window``.
            seed: Seed for random selectors.
        """
        super().__init__()
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"masking.ratio={ratio} must be in (0, 1]")
        if others not in OTHERS:
            raise ValueError(f"masking.others={others!r} is not supported; use one of {list(OTHERS)}")
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"masking.ema={ema} must be in [0, 1)")
        if calib_samples < 1 or refresh_every < 0:
            raise ValueError("masking.calib_samples must be >= 1 and masking.refresh_every >= 0")
        self.selector = selector if selector is not None else TopK()
        self.targets = tuple(str(t) for t in targets)
        self.ratio = float(ratio)
        self.statistic = check_statistic(statistic)
        self.unit = check_unit(unit)
        self.scope = check_scope(scope)
        self.others = others
        self.measure_at = measure_at
        self.calib_samples = int(calib_samples)
        self.refresh_every = int(refresh_every)
        self.ema = float(ema)
        self.seed = int(seed)
        self.history: list[dict[str, Any]] = []
        self._masks: dict[str, Tensor] = {}
        self._scores: dict[str, Tensor] = {}
        self._l1: dict[str, Tensor] = {}
        self._last_refresh = 0
        self._targets: list[Target] = []
        self._head_dim = 0
        self._freezer = RowFreezer()
        self._collector: StatsCollector | None = None
        self._warned_no_stats = False

    # ------------------------------------------------------------------ public API
    @property
    def state_key(self) -> str:
        """Stable checkpoint key (one masking callback per run)."""
        return "SaliencyMask"

    @property
    def masks(self) -> dict[str, Tensor]:
        """Qualified module name -> bool row mask (True = trained); CPU tensors, do not modify."""
        return dict(self._masks)

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable description of the current masks and their drift history."""
        modules = {
            name: {
                "rows": int(mask.numel()),
                "kept": int(mask.sum()),
                "l1_share": l1_share(self._l1[name], mask) if name in self._l1 else None,
            }
            for name, mask in self._masks.items()
        }
        shares = [m["l1_share"] for m in modules.values() if m["l1_share"] is not None]
        return {
            "ratio": self.ratio,
            "statistic": self.statistic,
            "unit": self.unit,
            "scope": self.scope,
            "others": self.others,
            "measure_at": self.measure_at,
            "targets": list(self.targets),
            "selector": type(self.selector).__name__,
            "refresh_every": self.refresh_every,
            "ema": self.ema,
            "seed": self.seed,
            "kept_rows": sum(m["kept"] for m in modules.values()),
            "total_rows": sum(m["rows"] for m in modules.values()),
            "l1_share": _mean(shares) if shares else None,
            "modules": modules,
            "history": list(self.history),
        }

    def export(self, path: str | Path) -> Path:
        """Write ``mask.safetensors`` and ``mask_summary.json`` into the folder ``path``."""
        return write_masks(path, self._masks, self.summary())

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Find the target modules; with ``others=frozen`` turn off gradients of every other policy param."""
        if stage != "fit":
            return
        policy = self._policy(pl_module)
        self._targets = find_targets(policy, self.targets, self.measure_at)
        self._head_dim = head_dim_of(policy) if self.unit != "channel" else 0
        if self.others == "frozen":
            keep = {id(p) for t in self._targets for p in t.linear.parameters()}
            for param in policy.parameters():
                if id(param) not in keep:
                    param.requires_grad_(False)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Calibrate (unless masks came from a checkpoint) and attach the optimizer and stats hooks."""
        names = [t.name for t in self._targets]
        if self._masks:
            if sorted(self._masks) != sorted(names):
                raise ValueError("masks in the checkpoint do not match this model's target modules")
        else:
            self._calibrate(trainer, pl_module)
        self._freezer.set_masks({t.name: t.linear for t in self._targets}, self._masks)
        self._freezer.attach(trainer.optimizers)
        if self.refresh_every > 0:
            self._collector = StatsCollector(
                {t.name: t.measured for t in self._targets},
                gate=lambda: getattr(pl_module, "stats_token_mask", None),
            )
            self._collector.attach()

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Zero the gradient rows outside the mask (before the module clips gradients)."""
        self._freezer.mask_grads()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Refresh the mask once ``refresh_every`` optimizer steps have completed since the last build."""
        if self.refresh_every > 0 and trainer.global_step - self._last_refresh >= self.refresh_every:
            self._refresh(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Export the masks into ``pl_module.export_dir`` (skipped when it is ``None``) and remove hooks."""
        self._detach()
        export_dir = getattr(pl_module, "export_dir", None)
        if export_dir is not None and trainer.is_global_zero and self._masks:
            self.export(export_dir)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remove every hook (also after an exception)."""
        self._detach()

    def state_dict(self) -> dict[str, Any]:
        """Masks, EMA statistics, last refresh step and history (saved in Lightning checkpoints)."""
        return {
            "masks": {k: v.clone() for k, v in self._masks.items()},
            "scores": {k: v.clone() for k, v in self._scores.items()},
            "l1": {k: v.clone() for k, v in self._l1.items()},
            "last_refresh": self._last_refresh,
            "history": list(self.history),
            "config": {
                "ratio": self.ratio,
                "statistic": self.statistic,
                "unit": self.unit,
                "scope": self.scope,
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a saved mask; a resumed run then skips calibration and trains the same rows."""
        saved = state_dict.get("config", {})
        now = {"ratio": self.ratio, "statistic": self.statistic, "unit": self.unit, "scope": self.scope}
        if saved and saved != now:
            rank_zero_warn(f"SaliencyMask: resuming with masks built for {saved}, config is now {now}")
        self._masks = {k: v.bool().cpu() for k, v in state_dict["masks"].items()}
        self._scores = {k: v.float().cpu() for k, v in state_dict.get("scores", {}).items()}
        self._l1 = {k: v.float().cpu() for k, v in state_dict.get("l1", {}).items()}
        self._last_refresh = int(state_dict.get("last_refresh", 0))
        self.history = list(state_dict.get("history", []))

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _policy(pl_module: pl.LightningModule) -> nn.Module:
        policy = getattr(pl_module, "policy", None)
        if not isinstance(policy, nn.Module):
            raise AttributeError("SaliencyMask needs `pl_module.policy` (the causal LM being trained)")
        return policy

    def _prompts(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[list[int]]:
        for owner in (getattr(trainer, "datamodule", None), pl_module):
            fn = getattr(owner, "calibration_prompts", None)
            if callable(fn):
                return [list(p) for p in fn(self.calib_samples)]
        raise AttributeError(
            "SaliencyMask needs `trainer.datamodule.calibration_prompts(n)` (long prompts as token id lists)"
        )

    def _calibrate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bf16 = "bf16" in str(trainer.precision)
        # each data-parallel rank calibrates on its share of the prompts; _sync sums the statistics
        mine, pad = shard_prompts(self._prompts(trainer, pl_module), trainer.global_rank, trainer.world_size)
        stats = collect_stats(self._policy(pl_module), self._targets, mine, bf16, pad_forwards=pad)
        stats = self._sync(trainer, stats)
        self._scores = {k: s.statistic(self.statistic) for k, s in stats.items()}
        self._l1 = {k: s.statistic("mean_abs") for k, s in stats.items()}
        self._masks = self._build(trainer)
        self._last_refresh = trainer.global_step
        shares = [l1_share(self._l1[k], m) for k, m in self._masks.items()]
        self.history.append({"step": trainer.global_step, "jaccard": None, "l1_share": _mean(shares)})

    def _build(self, trainer: pl.Trainer) -> dict[str, Tensor]:
        groups: dict[str, list[str]] = {}
        for t in self._targets:
            groups.setdefault(t.group, []).append(t.name)
        masks = build_masks(
            self._scores, groups, self.selector, self.ratio, self.unit, self._head_dim, self.scope, self.seed
        )
        if trainer.world_size > 1:  # every rank must train the same rows
            masks = trainer.strategy.broadcast(masks, src=0)
        return masks

    def _refresh(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self._collector is not None
        window = self._sync(trainer, self._collector.reset())
        if not window:
            if not self._warned_no_stats:
                rank_zero_warn(
                    "SaliencyMask: no tokens seen since the last mask build; is `stats_token_mask` set?"
                )
                self._warned_no_stats = True
            return
        for name, s in window.items():
            self._scores[name] = self.ema * self._scores[name] + (1 - self.ema) * s.statistic(self.statistic)
            self._l1[name] = self.ema * self._l1[name] + (1 - self.ema) * s.statistic("mean_abs")
        old, self._masks = self._masks, self._build(trainer)
        self._freezer.set_masks({t.name: t.linear for t in self._targets}, self._masks)
        self._last_refresh = trainer.global_step
        per_group: dict[str, tuple[list[float], list[float]]] = {}
        for t in self._targets:
            jac, share = per_group.setdefault(t.group, ([], []))
            jac.append(jaccard(old[t.name], self._masks[t.name]))
            share.append(l1_share(self._l1[t.name], self._masks[t.name]))
        metrics = {}
        for group, (jac, share) in per_group.items():
            metrics[f"mask/jaccard_{group}"] = _mean(jac)
            metrics[f"mask/l1_share_{group}"] = _mean(share)
        metrics["mask/jaccard"] = _mean([v for g in per_group.values() for v in g[0]])
        metrics["mask/l1_share"] = _mean([v for g in per_group.values() for v in g[1]])
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)
        self.history.append(
            {
                "step": trainer.global_step,
                "jaccard": metrics["mask/jaccard"],
                "l1_share": metrics["mask/l1_share"],
            }
        )

    @staticmethod
    def _sync(trainer: pl.Trainer, stats: dict[str, ChannelStats]) -> dict[str, ChannelStats]:
        """Sum (max for ``max_abs``) the statistics over ranks so every rank scores the same data."""
        if trainer.world_size <= 1:
            return stats
        reduce = trainer.strategy.reduce
        for s in stats.values():
            s.sum_abs = reduce(s.sum_abs, reduce_op="sum")
            s.sum_sq = reduce(s.sum_sq, reduce_op="sum")
            s.max_abs = reduce(s.max_abs, reduce_op="max")
            s.count = int(reduce(torch.tensor(float(s.count), device=s.sum_abs.device), reduce_op="sum"))
        return stats

    def _detach(self) -> None:
        self._freezer.detach()
        if self._collector is not None:
            self._collector.detach()
