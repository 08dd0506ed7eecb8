"""``SaliencyMask``: the LongAct Lightning callback (calibrate, mask the optimizer step, refresh, export).

Contract with the LightningModule (manual optimization):

* ``pl_module.policy``: the Hugging Face causal LM being trained.
* ``pl_module.learner``: the update loop (:class:`~longact_pl.learner.Learner`: ``add_hook`` /
  ``remove_hook``). In ``setup`` the callback registers its
  :class:`~longact_pl.masking.step_hook.MaskingStepHook` there: the learner tells it the real tokens of each
  training forward (statistics) and lets it mask the accumulated gradient once per optimizer step, before
  the non-finite guard, the gradient norm and the module's clipping see it.
* ``pl_module.export_dir``: a ``pathlib.Path`` (or ``None``) where the masks are written at the end of fit.
* ``trainer.datamodule.calibration_prompts(n) -> list[list[int]]`` (or the same method on the module).

Data parallel (DDP, FSDP2): each rank calibrates on its share of the prompts, the statistics are summed over
ranks before top-k (so every rank builds the single-process mask, which is also broadcast from rank 0), the
freezer works on each rank's local row block of sharded weights, and checkpoints hold the full masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from longact_pl.masking.apply import RowFreezer
from longact_pl.masking.builder import MaskBuilder
from longact_pl.masking.calibrate import collect_stats, select_calibration
from longact_pl.masking.export import write_masks
from longact_pl.masking.mask_metrics import drift_metrics, l1_share, mean
from longact_pl.masking.moments import warm_start_rows
from longact_pl.masking.options import MaskingOptions
from longact_pl.masking.selection import Selector, TopK
from longact_pl.masking.sharding import shard_prompts
from longact_pl.masking.stats import ChannelStats, StatsCollector, sync_stats
from longact_pl.masking.step_hook import MaskingStepHook
from longact_pl.masking.targets import find_targets, head_dim_of, qk_norms
from longact_pl.masking.telemetry import shares
from longact_pl.masking.units import Channel, SelectionUnit

STATE_KEY = "SaliencyMask"  # checkpoint key (one masking callback per run), read by the resume check


class SaliencyMask(pl.Callback):
    """Train only the salient rows of the target projections (LongAct); everything else stays exact.

    Attributes:
        options: The validated masking options (what ``mask_summary.json`` and checkpoints record).
        history: One entry per mask build: ``{"step", "jaccard", "l1_share", "entered"}`` (jaccard and
            entered are ``None`` at calibration).
    """

    def __init__(
        self,
        selector: Selector | None = None,
        targets: Sequence[str] = ("q_proj", "k_proj"),
        ratio: float = 0.3,
        statistic: str = "mean_abs",
        unit: SelectionUnit | None = None,
        scope: str = "per_matrix",
        pairing: str = "independent",
        norms: str = "dense",
        others: str = "dense",
        measure_at: str = "proj",
        calib_samples: int = 8,
        calib_min_tokens: int = 0,
        refresh_every: int = 0,
        ema: float = 0.9,
        seed: int = 0,
        rebuild_masks: bool = False,
        telemetry: bool = True,
    ) -> None:
        """Configure the mask (each option is described in ``conf/masking/saliency.yaml``).

        Args:
            selector: Picks units from scores (``TopK`` = LongAct, ``BottomK`` = inverse, ``RandomK``).
            targets: Suffixes of the ``nn.Linear`` names to mask (``q_proj``, ``k_proj``, ``qkv_proj``).
            ratio: Kept fraction per matrix (or per target name with ``scope=global``), in ``(0, 1]``.
            statistic: Unit score over tokens: ``mean_abs``, ``rms`` or ``max_abs``.
            unit: ``Channel()`` (default), ``RopePair()`` (the two channels RoPE rotates together), ``Head()``
                or any :class:`~longact_pl.masking.units.SelectionUnit` (``conf/masking/unit``).
            scope: ``per_matrix`` or ``global`` (rank across layers within a target name).
            pairing: ``independent`` (W_Q and W_K choose apart) or ``joint`` (same key-head units in both).
            norms: Qwen3 ``q_norm``/``k_norm`` weights: ``dense`` (trained) or ``frozen``.
            others: ``dense`` (non-target parameters train normally) or ``frozen`` (they get no update).
            measure_at: ``proj``, ``norm`` (Qwen3 ``q_norm``/``k_norm`` output) or ``post_rope``.
            calib_samples: Long prompts run before the first step to build the initial mask.
            calib_min_tokens: Calibrate on the first prompts with at least this many tokens (0: the first).
            refresh_every: Rebuild the mask every this many optimizer steps (0 = static mask).
            ema: Smoothing of refresh statistics: ``score = ema * score + (1 - ema) * window``.
            seed: Seed for random selectors.
            rebuild_masks: On resume, build new masks instead of restoring the checkpoint's.
            telemetry: Log ``mask/grad_share_kept``, ``mask/update_share_removed`` and
                ``mask/act_l1_share_kept`` every training step.
        """
        super().__init__()
        self.selector = selector if selector is not None else TopK()
        self.unit = Channel() if unit is None else unit
        if not isinstance(self.unit, SelectionUnit):
            raise ValueError(
                f"masking.unit={unit!r} is not a SelectionUnit; units are classes chosen by the config group "
                f"conf/masking/unit: use masking/unit={unit} (e.g. masking/unit=rope_pair)"
            )
        self.unit.check(measure_at)
        self.options = MaskingOptions(
            selector=type(self.selector).__name__, targets=tuple(str(t) for t in targets),
            ratio=float(ratio), statistic=statistic, unit=self.unit.name, scope=scope, pairing=pairing,
            norms=norms, others=others, measure_at=measure_at, calib_samples=int(calib_samples),
            refresh_every=int(refresh_every), ema=float(ema), seed=int(seed),
            calib_min_tokens=int(calib_min_tokens),
        )  # fmt: skip
        self.rebuild_masks, self.telemetry = bool(rebuild_masks), bool(telemetry)
        self.history: list[dict[str, Any]] = []
        self._masks: dict[str, Tensor] = {}  # target name -> row mask over the target's rows
        self._scores: dict[str, Tensor] = {}  # target name -> unit scores (EMA over refreshes)
        self._l1: dict[str, Tensor] = {}  # target name -> mean |activation| per channel
        self._last_refresh = 0
        self._calibration: dict[str, Any] | None = None  # which prompts built the first masks
        self._rebuilt: dict[str, Any] | None = None
        self._builder: MaskBuilder | None = None
        self._freezer = RowFreezer()
        self._step = MaskingStepHook(self._freezer, self.telemetry)  # registered with the learner in setup
        self._learner = None  # the learner it is registered with
        self._collector: StatsCollector | None = None
        self._window: dict[str, ChannelStats] = {}
        self._warned_no_stats = False

    # ------------------------------------------------------------------ public API
    @property
    def state_key(self) -> str:
        """Stable checkpoint key (one masking callback per run)."""
        return STATE_KEY

    @property
    def masks(self) -> dict[str, Tensor]:
        """Qualified module name -> bool row mask over all its rows (True = trained); CPU, do not modify."""
        return self._builder.module_masks(self._masks) if self._builder is not None else dict(self._masks)

    def check_model(self, model: nn.Module) -> MaskBuilder:
        """Check the options against ``model`` and prepare the mask builder (cheap; no forward pass).

        ``train.py`` calls this right after loading the model, so a bad combination (``unit=rope_pair`` on a
        model without RoPE, ``norms=frozen`` without ``q_norm``, an unknown fused layout) fails before the run
        directory is written.

        Raises:
            ValueError: Naming the ``masking.<field>`` that does not fit the model.
        """
        opts = self.options
        targets = find_targets(model, opts.targets, opts.measure_at)
        structured = self.unit.needs_head_dim or opts.pairing == "joint"
        head_dim = head_dim_of(model) if structured else 0
        unit = self.unit.bind(model, targets, head_dim)
        if opts.norms == "frozen":
            qk_norms(model, targets)
        return MaskBuilder(targets, opts, self.selector, unit, head_dim)

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable description of the masks in use, the options they were built with, and drift."""
        modules = {
            name: {
                "rows": int(mask.numel()),
                "kept": int(mask.sum()),
                "l1_share": l1_share(self._l1[name], mask) if name in self._l1 else None,
            }
            for name, mask in self._masks.items()
        }
        shares_ = [m["l1_share"] for m in modules.values() if m["l1_share"] is not None]
        return {
            **self.options.as_dict(),
            "kept_rows": sum(m["kept"] for m in modules.values()),
            "total_rows": sum(m["rows"] for m in modules.values()),
            "l1_share": mean(shares_) if shares_ else None,
            "rebuilt": self._rebuilt,
            "calibration": self._calibration,
            "modules": modules,
            "history": list(self.history),
        }

    def export(self, path: str | Path) -> Path:
        """Write ``mask.safetensors`` (one row mask per module) and ``mask_summary.json`` into ``path``."""
        return write_masks(path, self.masks, self.summary())

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Find the targets, freeze what the options freeze, register the step hook with the learner.

        Freezes other parameters with ``others=frozen`` and q/k norms with ``norms=frozen``.

        Raises:
            AttributeError: If the module has no learner to register with.
        """
        if stage != "fit":
            return
        policy = self._policy(pl_module)
        self._builder = self.check_model(policy)
        try:
            learner = pl_module.learner
        except AttributeError:
            raise AttributeError(
                "SaliencyMask needs `pl_module.learner` (a longact_pl.learner.Learner: add_hook, "
                "remove_hook) to mask each optimizer step's gradient"
            ) from None
        learner.add_hook(self._step)
        self._learner = learner
        frozen: list[nn.Parameter] = []
        if self.options.norms == "frozen":
            frozen += [p for norm in qk_norms(policy, self._builder.targets) for p in norm.parameters()]
        if self.options.others == "frozen":
            keep = {id(p) for linear in self._builder.linears.values() for p in linear.parameters()}
            frozen += [p for p in policy.parameters() if id(p) not in keep]
        for param in frozen:
            param.requires_grad_(False)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Calibrate (unless masks came from a checkpoint) and attach the optimizer and stats hooks."""
        builder = self._builder
        assert builder is not None, "SaliencyMask.setup did not run"
        if self._masks:
            if sorted(self._masks) != sorted(builder.names):
                raise ValueError("masks in the checkpoint do not match this model's target modules")
        else:
            if self._rebuilt is not None:
                self._rebuilt["step"] = trainer.global_step
            self._calibrate(trainer, pl_module)
        self._freezer.set_masks(builder.linears, self.masks)
        self._freezer.attach(trainer.optimizers)
        self._step.everything = [p for p in self._policy(pl_module).parameters() if p.requires_grad]
        self._step.targets = [p for linear in builder.linears.values() for p in linear.parameters()]
        refresh = self.options.refresh_every > 0
        if refresh or self.telemetry:
            self._collector = StatsCollector(
                {t.name: t.probe for t in builder.targets},
                gate=lambda: self._step.token_mask,
                units=builder.stats_units() if refresh else None,
                scores=refresh,
            )
            self._collector.attach()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Log the step's telemetry; refresh once ``refresh_every`` optimizer steps ran since the last one."""
        stats = self._collector.reset() if self._collector is not None else {}
        if self.options.refresh_every > 0:
            for name, s in stats.items():
                if name in self._window:
                    self._window[name].merge(s)
                else:
                    self._window[name] = s
        if self.telemetry:
            sums = self._step.grad.step_sums(stats, self._masks, pl_module.device)  # [5]
            if trainer.world_size > 1:
                sums = trainer.strategy.reduce(sums, reduce_op="sum")
            pl_module.log_dict(shares(sums.cpu()), on_step=True, on_epoch=False)
        if (
            self.options.refresh_every > 0
            and trainer.global_step - self._last_refresh >= self.options.refresh_every
        ):
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
        """Masks, EMA statistics, last refresh step, history and the options (saved in checkpoints)."""
        return {
            "masks": {k: v.clone() for k, v in self._masks.items()},
            "scores": {k: v.clone() for k, v in self._scores.items()},
            "l1": {k: v.clone() for k, v in self._l1.items()},
            "last_refresh": self._last_refresh,
            "history": list(self.history),
            "config": self.options.as_dict(),
            "rebuilt": self._rebuilt,
            "calibration": self._calibration,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a saved mask (a resumed run then skips calibration and trains the same rows).

        Raises:
            ValueError: If the checkpoint's masks were built with other options, unless ``rebuild_masks``.
        """
        saved = state_dict.get("config", {})
        if self.rebuild_masks:  # on_train_start calibrates new masks at the resumed step
            self._rebuilt = {"step": None, "previous": saved}
            return
        self.options.check_resume(saved, ignore=() if getattr(self.selector, "seeded", True) else ("seed",))
        self._masks = {k: v.bool().cpu() for k, v in state_dict["masks"].items()}
        self._scores = {k: v.float().cpu() for k, v in state_dict.get("scores", {}).items()}
        self._l1 = {k: v.float().cpu() for k, v in state_dict.get("l1", {}).items()}
        self._last_refresh = int(state_dict.get("last_refresh", 0))
        self.history = list(state_dict.get("history", []))
        self._rebuilt = state_dict.get("rebuilt")
        self._calibration = state_dict.get("calibration")

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _policy(pl_module: pl.LightningModule) -> nn.Module:
        policy = getattr(pl_module, "policy", None)
        if not isinstance(policy, nn.Module):
            raise AttributeError("SaliencyMask needs `pl_module.policy` (the causal LM being trained)")
        return policy

    def _calibrate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        builder = self._builder
        assert builder is not None
        bf16 = "bf16" in str(trainer.precision)
        # each data-parallel rank calibrates on its share of the prompts; _sync sums the statistics
        owners, opts = (getattr(trainer, "datamodule", None), pl_module), self.options
        prompts, used = select_calibration(owners, opts.calib_samples, opts.calib_min_tokens)
        self._calibration = {"prompt_indices": used, "prompt_tokens": [len(p) for p in prompts]}
        mine, pad = shard_prompts(prompts, trainer.global_rank, trainer.world_size)
        policy = self._policy(pl_module)
        stats = collect_stats(policy, builder.targets, mine, bf16, pad, units=builder.stats_units())
        stats = self._sync(trainer, stats)
        self._scores = builder.scores(stats)
        self._l1 = {k: s.mean_l1() for k, s in stats.items()}
        self._masks = self._build(trainer)
        self._last_refresh = trainer.global_step
        shares_ = [l1_share(self._l1[k], m) for k, m in self._masks.items()]
        self.history = [
            {"step": trainer.global_step, "jaccard": None, "l1_share": mean(shares_), "entered": None}
        ]

    def _build(self, trainer: pl.Trainer) -> dict[str, Tensor]:
        assert self._builder is not None
        masks = self._builder.build(self._scores)
        if trainer.world_size > 1:  # every rank must train the same rows
            masks = trainer.strategy.broadcast(masks, src=0)
        return masks

    def _refresh(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        builder = self._builder
        assert builder is not None
        window, self._window = self._sync(trainer, self._window), {}
        if not window:
            if not self._warned_no_stats:
                rank_zero_warn(
                    "SaliencyMask: no tokens seen since the last mask build; does the learner call its "
                    "hooks' on_forward around the training forwards?"
                )
                self._warned_no_stats = True
            return
        new_scores, ema = builder.scores(window), self.options.ema
        for name, s in window.items():
            self._scores[name] = ema * self._scores[name] + (1 - ema) * new_scores[name]
            self._l1[name] = ema * self._l1[name] + (1 - ema) * s.mean_l1()
        old, self._masks = self._masks, self._build(trainer)
        reduce = None
        if trainer.world_size > 1:
            reduce = lambda t: trainer.strategy.reduce(t, reduce_op="sum")  # noqa: E731
        entered = builder.entering(old, self._masks)
        warm_start_rows(trainer.optimizers, entered, reduce)
        self._freezer.set_masks(builder.linears, self.masks)
        self._last_refresh = trainer.global_step
        metrics = drift_metrics(builder.targets, old, self._masks, self._l1)
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)
        self.history.append(
            {
                "step": trainer.global_step,
                "jaccard": metrics["mask/jaccard"],
                "l1_share": metrics["mask/l1_share"],
                "entered": int(metrics["mask/entered_rows"]),
            }
        )

    @staticmethod
    def _sync(trainer: pl.Trainer, stats: dict[str, ChannelStats]) -> dict[str, ChannelStats]:
        """Sum (max for ``max_abs``) the statistics over ranks so every rank scores the same data."""
        if trainer.world_size > 1:
            sync_stats(stats, trainer.strategy.reduce)
        return stats

    def _detach(self) -> None:
        self._freezer.detach()
        if self._learner is not None:
            self._learner.remove_hook(self._step)
            self._learner = None
        if self._collector is not None:
            self._collector.detach()
