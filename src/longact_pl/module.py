"""The LightningModule: a policy, a frozen reference, and one RL step per batch of prompts."""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import lightning as L
import torch
from torch import nn

from longact_pl.algos.correction import RolloutCorrection
from longact_pl.algos.protocol import Algorithm
from longact_pl.distributed import StrategyOps, data_parallel_rank
from longact_pl.eval.heldout import HeldOutValidation
from longact_pl.gather import save_full_pretrained
from longact_pl.guards import SafetyStops
from longact_pl.kl_fp32 import Fp32KLCheck
from longact_pl.learner import Learner, OptimizerCalls
from longact_pl.metric_reduce import Metric, reduce_metrics
from longact_pl.module_config import LearnerConfig, LogprobConfig, SafetyConfig, ValidationConfig
from longact_pl.ops.policy_logprobs import LogprobPass
from longact_pl.optim import (
    OptimizerFactory,
    SchedulerFactory,
    build_optimizer,
    check_optimizer_settings,
    clip_gradients,
    linear_warmup,
    optimizer_step,
)
from longact_pl.precision import check_master_weights
from longact_pl.rewards import hooks as reward_hooks
from longact_pl.rewards.scoring import RewardErrors
from longact_pl.rewards.types import RewardFn
from longact_pl.rollout.async_hook import AsyncStep
from longact_pl.rollout.types import RolloutEngine
from longact_pl.sampling import ScoredRollout, more_prompt_batches, sample_and_score
from longact_pl.step_log import format_step, step_metrics
from longact_pl.strategies import move_model

log = logging.getLogger(__name__)

# counters summed over ranks whose run totals a checkpoint keeps
TOTALS = ("train/truncated_prompts_total", "train/reward_errors")


class _FrozenReference:
    """Holds the reference model outside ``nn.Module`` registration: not trained, not checkpointed."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval().requires_grad_(False)


class LongActModule(L.LightningModule):
    """GRPO-family RL on a Hugging Face causal LM.

    Lightning wiring around :class:`~longact_pl.learner.Learner`: a training step is rollout -> rewards ->
    advantages -> ``Learner.prepare`` (no-grad passes) -> ``Learner.update`` (``ppo_epochs`` passes over
    mini-batches, each split into micro-batches whose gradients accumulate into one optimizer step).
    Optimisation is manual; backward and the optimizer step are Lightning's, and gradient clipping happens in
    :meth:`on_before_optimizer_step`, after the learner's hooks (``SaliencyMask`` registers itself with
    ``self.learner`` in its ``setup``) have masked the gradient.

    Args:
        policy: The causal LM to train.
        tokenizer: Its tokenizer (left padding).
        algorithm: Loss, advantages and reward shaping (see ``longact_pl.algos``).
        rollout: Rollout engine.
        reward_fn: ``(completions, references, **meta) -> list[float]``.
        optimizer: Builds the optimizer from the trainable parameters (``module.optimizer``: any
            ``torch.optim`` class as a ``_partial_`` node; see :func:`~longact_pl.optim.build_optimizer`).
        scheduler: Builds the learning-rate schedule from the optimizer (``module.scheduler``; ``None``:
            constant).
        learner: The update's batching and gradient clipping (see :class:`~longact_pl.learner.Learner`).
        logprobs: The log-prob passes (see :class:`~longact_pl.ops.policy_logprobs.LogprobPass`).
        guards: Bad steps in a row that stop the run with a checkpoint (see
            :class:`~longact_pl.guards.SafetyStops`).
        validation: Held-out lengths and greedy budget (see
            :class:`~longact_pl.eval.heldout.HeldOutValidation`).
        correction: Importance weights for an external sampler's mismatch (``None``: metrics only).
        seed: Base seed for sampling.
        val_tasks, predictions_dir: The held-out set's task names and where its predictions are written.
        export_dir: Where the trained policy is saved at the end (``None`` = not saved).
        allow_low_precision_weights: Train bf16/fp16 parameters (refused by default: see
            ``longact_pl.precision``).
        kl_fp32_check_rows: Recompute each step's KL in fp32 on this many rows, logged beside the run's
            precision as ``train/kl_fp32`` / ``train/kl_autocast`` (0 = off; see ``longact_pl.kl_fp32``).
    """

    def __init__(
        self,
        policy: nn.Module,
        tokenizer,
        algorithm: Algorithm,
        rollout: RolloutEngine,
        reward_fn: RewardFn,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        learner: LearnerConfig | None = None,
        logprobs: LogprobConfig | None = None,
        guards: SafetyConfig | None = None,
        validation: ValidationConfig | None = None,
        correction: RolloutCorrection | None = None,
        seed: int = 0,
        val_tasks: list[str] | tuple[str, ...] = (),
        export_dir: str | Path | None = None,
        predictions_dir: str | Path | None = None,
        allow_low_precision_weights: bool = False,
        kl_fp32_check_rows: int = 0,
    ) -> None:
        super().__init__()
        check_master_weights(policy.parameters(), allow_low_precision_weights)  # before any file is written
        check_optimizer_settings(optimizer, scheduler)
        learner, logprobs = learner or LearnerConfig(), logprobs or LogprobConfig()
        guards, validation = guards or SafetyConfig(), validation or ValidationConfig()
        self.automatic_optimization = False
        self.policy = policy.train()  # from_pretrained returns eval mode; rollouts switch to eval themselves
        self.tokenizer, self.algorithm = tokenizer, algorithm
        self.rollout, self.reward_fn = rollout, reward_fn
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler or linear_warmup
        self.allow_low_precision_weights = allow_low_precision_weights
        self.max_grad_norm = learner.max_grad_norm
        self.stops = SafetyStops(guards.max_nonfinite_steps, guards.max_skipped_steps,
                                 guards.max_reward_failure_steps, algorithm.max_gen_rounds,
                                 guards.max_masked_out_steps)  # fmt: skip
        # the entropy bonus needs the training pass's entropy with its gradient
        # the path is planned once, here (a model that cannot pack, with packing required, fails here)
        logprob_pass = LogprobPass.for_model(
            policy, logprobs.shared_prefix, logprobs.chunk_size, logprobs.pack_completions,
            entropy_grad=algorithm.entropy_coef > 0,
        )  # fmt: skip
        self.learner = Learner(
            algorithm, logprob_pass, self.stops.nonfinite, rollout.temperature, learner.ppo_epochs,
            learner.mini_batch_size, learner.micro_batch_size, correction, external=rollout.external,
            micro_batch_tokens=learner.micro_batch_tokens, max_prompt_tokens=learner.max_prompt_tokens,
            max_new_tokens=rollout.max_new_tokens,
        )  # fmt: skip
        self.seed = seed
        # rollout.mode=async: the producer sampling ahead, called at the step's declared points (sync: no-op)
        self.async_step = AsyncStep(getattr(rollout, "schedule", None), seed)
        self.export_dir = Path(export_dir) if export_dir else None
        self.predictions_dir = Path(predictions_dir) if predictions_dir else None
        self.validated_steps: set[int] = set()  # global steps whose weights were validated (run_end.py)
        self._ref = _FrozenReference(copy.deepcopy(policy)) if algorithm.kl_coef > 0 else None
        self.kl_check = self._kl_check(kl_fp32_check_rows, algorithm)
        self.validation = HeldOutValidation(
            val_tasks, validation.lengths, predictions_dir, validation.max_new_tokens
        )
        self.truncated_total, self.reward_errors = 0, RewardErrors()
        self._totals: dict | None = None  # the run's counters at the last logged step

    def _kl_check(self, rows: int, algorithm: Algorithm) -> Fp32KLCheck | None:
        """The fp32 KL check of ``module.kl_fp32_check_rows`` (``None``: off)."""
        if rows == 0:
            return None
        if self._ref is None:
            raise ValueError(
                f"module.kl_fp32_check_rows={rows} compares with the reference model, which algo.kl_coef=0 "
                "does not load: set algo.kl_coef > 0 or module.kl_fp32_check_rows=0"
            )
        return Fp32KLCheck(rows, getattr(getattr(algorithm, "policy_loss", None), "kl_estimator", "k3"))

    @property
    def ref_model(self) -> nn.Module | None:
        """The frozen reference model (``None`` when the algorithm has no KL term)."""
        return self._ref.model if self._ref else None

    # ------------------------------------------------------------------ setup
    def on_fit_start(self) -> None:
        """Move the (unregistered) reference model next to the policy."""
        if self._ref is not None:  # an FSDP2 CPU-offloaded reference keeps its parameters in CPU memory
            move_model(self._ref.model, self.device, getattr(self.trainer.strategy, "cpu_offload", False))

    def configure_model(self) -> None:
        """Choose the packed attention kernel for the training device, then shard (FSDP/DDP strategies).

        A ``longact_pl.strategies`` strategy shards the policy and the frozen reference (else no-op).
        """
        self.learner.logprobs = self.learner.logprobs.on_device(self.trainer.strategy.root_device)
        log.info(
            "log-prob passes: %s (%s)", self.learner.logprobs.plan.path, self.learner.logprobs.plan.reason
        )
        parallelize = getattr(self.trainer.strategy, "parallelize", None)
        if callable(parallelize):
            parallelize(self)

    @property
    def dist(self) -> StrategyOps:
        """Data-parallel collectives through the trainer's strategy (shared by sampling, guard, learner)."""
        return StrategyOps(self.trainer.strategy)

    def configure_optimizers(self):
        """``module.optimizer`` over the trainable parameters, and ``module.scheduler`` per optimizer step.

        The parameters are fp32 (``longact_pl.precision``); the update kernel is chosen for their device
        (:func:`~longact_pl.optim.build_optimizer`).
        """
        params = [p for p in self.policy.parameters() if p.requires_grad]
        check_master_weights(params, self.allow_low_precision_weights)  # e.g. trainer.precision=bf16-true
        opt = build_optimizer(self.optimizer_factory, params)
        sched = self.scheduler_factory(opt)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --------------------------------------------------------------- training
    def _sample(self, batch: list[dict]) -> ScoredRollout | None:
        algo = self.algorithm
        rank, _ = data_parallel_rank(self.trainer)  # a sequence-parallel group draws the same prompts
        engine = self.async_step.engine(
            self.rollout, batch, self.policy, self.tokenizer, self.global_step, self.trainer,
            self._save_stop_checkpoint,
        )  # fmt: skip  # async: sampled ahead
        return sample_and_score(
            engine, self.policy, self.tokenizer, self.reward_fn, batch, shape=algo.shape_rewards,
            keep_groups=algo.keep_groups if algo.dynamic_sampling else None,
            max_rounds=algo.max_gen_rounds,
            more_samples=lambda: more_prompt_batches(self.trainer.datamodule, self.seed + 1 + rank),
            seed=self.seed * 1_000_003 + self.global_step * 101, errors=self.reward_errors, dist=self.dist,
        )  # fmt: skip

    def training_step(self, batch: list[dict], batch_idx: int) -> None:
        """One RL step: sample, score, and optimise (manual optimisation, through the learner)."""
        start = time.perf_counter()
        truncated = sum(int(s.get("truncated", False)) for s in batch)
        self.truncated_total += truncated
        self.reward_errors.new_step()
        reward_hooks.begin_step(self.reward_fn, self.global_step, "train")  # the judge's per-step counters
        scored = self._sample(batch)
        errors, save = self.reward_errors, self._save_stop_checkpoint
        self.stops.check_rewards(errors.step_all_failed, errors.step_first, self.dist, save)
        # every rank skips together (sampling agrees)
        if self.stops.skipped.record(scored is None, self.dist):
            self.async_step.after_step(self.policy)  # async: the next version (unchanged weights)
            self._on_skipped_step()
            return
        rewards = scored.rewards.to(self.device)  # [N]; advantages in prepare (after a KL reward penalty)
        train_batch = self.learner.prepare(self.policy, self.ref_model, scored.batch, rewards, self.dist)
        kl_check = {}  # before the update: the weights train/kl is measured at
        if self.kl_check is not None:
            kl_check = self.kl_check(self.learner, self.policy, self.ref_model, train_batch, self.dist)
        update = self.learner.update(
            self.policy, train_batch, self._optimizer_calls(), self.dist,
            generator=torch.Generator().manual_seed(self.seed + self.global_step),
        )  # fmt: skip
        active = self.learner.correction.active  # every token masked out: nothing learned
        masked = update.get("train/correction/token_masked_frac") if active else None
        self.stops.check_masked_out(masked, self.dist, self._save_stop_checkpoint)
        lr = self.optimizers().param_groups[0]["lr"]
        logs = step_metrics(scored, truncated, self.truncated_total, self.reward_errors.count,
                            time.perf_counter() - start, lr, {**update, **kl_check})  # fmt: skip
        logs["train/skipped_steps_total"] = Metric(self.stops.skipped.total, "same")  # ranks skip together
        logs.update(reward_hooks.step_metrics(self.reward_fn))  # train/judge/* counts (sums over ranks)
        self.async_step.after_step(self.policy, logs)  # async: publish the new weights, train/async/*
        logs = reduce_metrics(logs, self.dist, self._counted_rank)  # the global values, one collective
        self._totals = {k: logs[k] for k in TOTALS}  # what a checkpoint keeps of the run's counters
        self.log_dict(logs, on_step=True, batch_size=len(batch))
        reward = logs["train/reward_mean"]
        self.log("reward", reward, prog_bar=True, on_step=True, logger=False, batch_size=len(batch))

    @property
    def _counted_rank(self) -> bool:
        """Whether this rank's metrics count: its sequence-parallel group's first rank (or no group)."""
        sp = getattr(self.trainer.strategy, "sequence_parallel", None)
        return sp is None or sp.rank == 0

    def _optimizer_calls(self) -> OptimizerCalls:
        """Lightning's backward and optimizer step (callbacks' hooks, clipping and precision plugins run)."""
        opt, sched = self.optimizers(), self.lr_schedulers()
        return OptimizerCalls(
            backward=self.manual_backward,
            step=lambda: optimizer_step(opt, sched),  # also drops autocast's cached bf16 weights
            zero_grad=lambda: opt.zero_grad(set_to_none=True),
            skip=self._on_nonfinite_step,
        )

    def _save_stop_checkpoint(self, name: str) -> Path:
        """Write ``checkpoints/<name>`` before a safety stop (every rank calls it: ranks agree to stop)."""
        path = Path(self.trainer.default_root_dir) / "checkpoints" / name
        self.trainer.save_checkpoint(path)
        return path

    def _on_nonfinite_step(self) -> None:
        """Skip the update; after ``max_nonfinite_steps`` in a row write a checkpoint and stop."""
        self.log("train/nonfinite_steps", float(self.stops.nonfinite.total), on_step=True)
        self.stops.on_nonfinite_step(self._save_stop_checkpoint)

    def _on_skipped_step(self) -> None:
        """Log and print the skip; after ``max_skipped_steps`` in a row write a checkpoint and stop."""
        self.log("train/skipped_steps", 1.0, on_step=True, reduce_fx="sum")
        self.log("train/skipped_steps_total", float(self.stops.skipped.total), on_step=True)
        step = format_step(self.global_step, self.trainer.max_steps, {})  # printed on rank 0 only
        self.stops.on_skipped_step(self._save_stop_checkpoint, step if self.trainer.is_global_zero else None)

    def on_before_optimizer_step(self, optimizer) -> None:
        """Clip gradients (learner hooks, e.g. LongAct's gradient masking, have already run)."""
        if self.max_grad_norm > 0:
            clip_gradients(self, optimizer, self.max_grad_norm)  # a fused optimizer under bf16-mixed too

    # ------------------------------------------------------------- validation
    def validation_step(self, batch: list[dict], batch_idx: int) -> None:
        """Greedy decoding on held-out prompts, scored by the task reward (as ``evaluate.py`` does)."""
        reward_hooks.begin_step(self.reward_fn, self.global_step, "val")
        args = (self.rollout, self.policy, self.tokenizer, batch, self.reward_fn, self.global_step)
        self.validation.score(*args, errors=self.reward_errors)

    def on_validation_epoch_end(self) -> None:
        """Log ``val/acc`` (per length, per task and length); rank 0 writes the per-prompt rows."""
        values = self.validation.finish(self.global_step, self.dist.gather, self.trainer.is_global_zero)
        self.validated_steps.add(self.global_step)
        if values:
            self.log_dict(values)
            self.log("val_acc", values["val/acc"], prog_bar=True, logger=False)

    # ------------------------------------------------------------ checkpoint
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Run counters that must survive a resume (the reference model is never saved).

        The truncation and reward-error totals are the run's (summed over ranks at the last logged step);
        each rank counts its own share, so on resume the first rank carries the saved totals alone.
        """
        totals = self._totals or {
            "train/truncated_prompts_total": self.truncated_total,
            "train/reward_errors": self.reward_errors.count,
        }
        checkpoint["longact_counters"] = {
            "truncated_total": int(totals["train/truncated_prompts_total"]),
            "reward_errors": int(totals["train/reward_errors"]),
            **self.stops.state_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the counters written by :meth:`on_save_checkpoint` (run totals: on the first rank)."""
        state = checkpoint.get("longact_counters", {})
        first = self._trainer is None or self._trainer.global_rank == 0
        self.truncated_total = int(state.get("truncated_total", 0)) if first else 0
        self.reward_errors.count = int(state.get("reward_errors", 0)) if first else 0
        self.stops.load_state_dict(state)

    # ----------------------------------------------------------------- export
    @property
    def exported(self) -> bool:
        """Whether ``export_dir`` holds the trained weights (or there is nowhere to export)."""
        return self.export_dir is None or any(self.export_dir.glob("*.safetensors"))

    def on_train_end(self) -> None:
        """Save the trained policy and tokenizer with ``save_pretrained`` into ``export_dir``."""
        self.async_step.close()  # async: stop the sampler thread
        self.export()

    def export(self) -> None:
        """Save the policy and tokenizer into ``export_dir`` (no-op without one)."""
        if self.export_dir is not None:  # FSDP: every rank gathers the full weights, rank 0 writes them
            save_full_pretrained(self.policy, self.tokenizer, self.export_dir, self.trainer.is_global_zero)
