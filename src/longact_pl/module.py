"""The LightningModule: a policy, a frozen reference, and one RL step per batch of prompts."""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric

from longact_pl.algos.losses import masked_mean
from longact_pl.algos.protocol import Algorithm
from longact_pl.algos.tis import truncated_is_weights
from longact_pl.data.dataset import drop_padding
from longact_pl.eval.metrics import TaskLengthAccuracy
from longact_pl.eval.scoring import evaluate_batch
from longact_pl.gather import full_state_dict, is_sharded
from longact_pl.guards import NonFiniteError, NonFiniteGuard
from longact_pl.minibatch import micro_batch_rows, minibatch_indices
from longact_pl.ops.policy_logprobs import LogprobPass
from longact_pl.optim import adamw_with_warmup, optimizer_step
from longact_pl.rewards.scoring import RewardErrors
from longact_pl.rewards.types import RewardFn
from longact_pl.rollout.types import RolloutBatch, RolloutEngine
from longact_pl.sampling import ScoredRollout, sample_and_score

log = logging.getLogger(__name__)


class _Frozen:
    """Holds the reference model outside ``nn.Module`` registration: not trained, not checkpointed."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval().requires_grad_(False)


class LongActModule(L.LightningModule):
    """GRPO-family RL on a Hugging Face causal LM.

    A training step is: rollout -> rewards -> advantages -> ``ppo_epochs`` passes over mini-batches of
    the rollouts, each mini-batch split into micro-batches whose gradients accumulate into one
    optimizer step. Optimisation is manual; gradient clipping happens in :meth:`on_before_optimizer_step`,
    after callbacks (e.g. ``SaliencyMask``) have masked the gradient.

    Args:
        policy: The causal LM to train.
        tokenizer: Its tokenizer (left padding).
        algorithm: Loss, advantages and reward shaping (see ``longact_pl.algos``).
        rollout: Rollout engine.
        reward_fn: ``(completions, references, **meta) -> list[float]``.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_steps: Linear learning-rate warm-up in optimizer steps.
        max_grad_norm: Clip the global gradient norm to this (0 = off).
        ppo_epochs: Passes over one rollout batch.
        mini_batch_size: Sequences per optimizer step (0 = the whole rollout batch).
        micro_batch_size: Sequences per forward/backward; with ``shared_prefix`` and at least G, rounded
            down to whole groups.
        shared_prefix: Run each group's prompt once in the log-prob passes (exact; falls back per row).
        logprob_chunk: Completion tokens per LM-head chunk (``None``: all at once).
        val_lengths: Target lengths of the validation set (accuracy is logged per task and length).
        val_tasks: Task names of the validation set (empty: only the overall accuracy is logged).
        val_max_new_tokens: Greedy budget at validation (``None`` = the rollout's).
        seed: Base seed for sampling.
        export_dir: Where the trained policy is saved at the end (``None`` = not saved).
        max_nonfinite_steps: Consecutive non-finite steps (skipped) that stop the run with a checkpoint.
    """

    def __init__(
        self,
        policy: nn.Module,
        tokenizer,
        algorithm: Algorithm,
        rollout: RolloutEngine,
        reward_fn: RewardFn,
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        max_grad_norm: float = 1.0,
        ppo_epochs: int = 1,
        mini_batch_size: int = 0,
        micro_batch_size: int = 4,
        shared_prefix: bool = True,
        logprob_chunk: int | None = 1024,
        val_lengths: list[int] | tuple[int, ...] = (),
        val_tasks: list[str] | tuple[str, ...] = (),
        val_max_new_tokens: int | None = None,
        seed: int = 0,
        export_dir: str | Path | None = None,
        max_nonfinite_steps: int = 3,
    ) -> None:
        super().__init__()
        limits = {"ppo_epochs": (ppo_epochs, 1), "micro_batch_size": (micro_batch_size, 1),
                  "mini_batch_size": (mini_batch_size, 0), "warmup_steps": (warmup_steps, 0)}  # fmt: skip
        for name, (value, low) in limits.items():
            if value < low:
                raise ValueError(f"module.{name} must be >= {low}, got {value}")
        if lr <= 0:
            raise ValueError(f"module.lr must be > 0, got {lr}")
        self.automatic_optimization = False
        self.policy = policy.train()  # from_pretrained returns eval mode; rollouts switch to eval themselves
        self.tokenizer = tokenizer
        self.algorithm = algorithm
        self.rollout = rollout
        self.reward_fn = reward_fn
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)
        self.warmup_steps, self.max_grad_norm = warmup_steps, max_grad_norm
        self.ppo_epochs, self.mini_batch_size, self.micro_batch_size = (
            ppo_epochs,
            mini_batch_size,
            micro_batch_size,
        )
        # the entropy bonus needs the training pass's entropy with its gradient
        self.logprobs = LogprobPass(shared_prefix, logprob_chunk, entropy_grad=algorithm.entropy_coef > 0)
        self.val_max_new_tokens = val_max_new_tokens
        self.seed = seed
        self.export_dir = Path(export_dir) if export_dir else None
        self._ref = _Frozen(copy.deepcopy(policy)) if algorithm.kl_coef > 0 else None
        # Per task x length accuracy, summed across ranks; without task/length lists only the overall mean.
        self.val_metric = TaskLengthAccuracy(val_tasks, val_lengths) if val_tasks and val_lengths else None
        self.val_acc_all = MeanMetric()
        # Set around policy training forwards so saliency hooks know which tokens are real.
        self.stats_token_mask: torch.Tensor | None = None
        self.truncated_total = 0
        self.guard = NonFiniteGuard(max_nonfinite_steps)
        self.reward_errors = RewardErrors()

    @property
    def ref_model(self) -> nn.Module | None:
        """The frozen reference model (``None`` when the algorithm has no KL term)."""
        return self._ref.model if self._ref else None

    # ------------------------------------------------------------------ setup
    def on_fit_start(self) -> None:
        """Move the (unregistered) reference model next to the policy."""
        if self._ref is not None:
            self._ref.model.to(self.device)

    # --- scale-out (DDP/FSDP, vLLM) begin
    def configure_model(self) -> None:
        """Let a ``longact_pl.strategies`` strategy shard the policy and the frozen reference (else no-op)."""
        parallelize = getattr(self.trainer.strategy, "parallelize", None)
        if callable(parallelize):
            parallelize(self)

    def _global_counts(self, num_seqs: int, num_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequences and valid tokens of this mini-batch, summed over data-parallel ranks.

        Every rank normalises its loss by these global counts and multiplies it by the world size (in
        ``_micro_step``), because DDP and FSDP average gradients over ranks: the update then equals one
        process training on the union of the ranks' batches, for every aggregation (DAPO's token mean too).
        """
        counts = torch.stack([torch.tensor(float(num_seqs)), num_tokens.detach().float().cpu()])  # [2]
        if self.trainer.world_size > 1:
            counts = self.trainer.strategy.reduce(counts.to(self.device), reduce_op="sum").cpu()  # [2]
        return counts[0], counts[1]

    @torch.no_grad()
    def _policy_logprobs(self, ro: RolloutBatch) -> torch.Tensor:
        """Trainer log-probs of the rollouts before any update of this step (TIS with several passes)."""
        return self._no_grad_logprobs(self.policy, ro)  # [N, C]

    # --- scale-out end

    def configure_optimizers(self):
        """AdamW over trainable parameters with a linear warm-up."""
        params = [p for p in self.policy.parameters() if p.requires_grad]
        opt, sched = adamw_with_warmup(params, self.lr, self.betas, self.weight_decay, self.warmup_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --------------------------------------------------------------- training
    def _more_samples(self):
        """Further prompt batches for dynamic sampling, from an independently shuffled loader."""
        dm = self.trainer.datamodule
        loader = (
            dm.extra_dataloader(seed=self.seed + 1 + self.global_rank)
            if hasattr(dm, "extra_dataloader")
            else dm.train_dataloader()
        )
        while True:
            yield from loader

    def _sample(self, batch: list[dict]) -> ScoredRollout | None:
        algo = self.algorithm
        return sample_and_score(
            self.rollout, self.policy, self.tokenizer, self.reward_fn, batch,
            shape=algo.shape_rewards,
            keep_groups=algo.keep_groups if algo.dynamic_sampling else None,
            max_rounds=getattr(algo, "max_gen_rounds", 1),
            more_samples=self._more_samples,
            seed=self.seed * 1_000_003 + self.global_step * 101,
            errors=self.reward_errors,
            min_over_ranks=self._min_over_ranks,
        )  # fmt: skip

    def _min_over_ranks(self, value: int) -> int:
        """Minimum over data-parallel ranks, so they agree on extra rounds, batch size and skipped steps."""
        if self.trainer.world_size == 1:
            return value
        return int(self.trainer.strategy.reduce(torch.tensor(value, device=self.device), reduce_op="min"))

    def _ref_logprobs(self, ro: RolloutBatch) -> torch.Tensor | None:
        return self._no_grad_logprobs(self._ref.model, ro) if self._ref is not None else None  # [N, C]

    @torch.no_grad()
    def _no_grad_logprobs(self, model: nn.Module, ro: RolloutBatch) -> torch.Tensor:
        width = ro.completion_mask.shape[1]
        rows = micro_batch_rows(self.micro_batch_size, ro.group_size, self.logprobs.shared_prefix)
        groups = torch.arange(len(ro.input_ids)) // ro.group_size  # [N]
        parts = zip(ro.input_ids.split(rows), ro.attention_mask.split(rows), groups.split(rows))
        out = [
            self.logprobs(model, ids, am, width, self.rollout.temperature, row_groups=g)[0]
            for ids, am, g in parts
        ]
        return torch.cat(out)  # [N, C]

    def training_step(self, batch: list[dict], batch_idx: int) -> None:
        """One RL step: sample, score, and optimise (manual optimisation)."""
        start = time.perf_counter()
        truncated = sum(int(s.get("truncated", False)) for s in batch)
        self.truncated_total += truncated
        scored = self._sample(batch)
        if scored is None:
            self.log("train/skipped_steps", 1.0, on_step=True, reduce_fx="sum")
            return
        ro = scored.batch
        group = ro.group_size
        ref_logp = self._ref_logprobs(ro)  # [N, C] or None
        # KL as a reward penalty (algo.kl_in_reward), measured at the sampler's log-probs
        rewards = self.algorithm.kl_reward(scored.rewards, ro.behaviour_logp, ref_logp, ro.completion_mask)
        advantages = self.algorithm.advantages(rewards, group).to(self.device)  # [N]
        metrics = self._optimise(ro, advantages, ref_logp)
        first = scored.first_round_rewards  # [N0]
        groups = first.view(-1, group)  # [B0, G]
        tokens = int(ro.attention_mask.sum())
        logs = {
            "train/reward_mean": first.mean(),
            "train/reward_std": first.std(unbiased=False),
            "train/accuracy": (first >= 1.0).float().mean(),
            "train/zero_std_groups": (groups.std(-1, unbiased=False) == 0).float().mean(),
            "train/completion_len": ro.completion_lengths.float().mean(),
            "train/truncated_prompts": float(truncated),
            "train/truncated_prompts_total": float(self.truncated_total),
            "train/gen_rounds": float(scored.rounds),
            "train/dropped_groups": float(scored.dropped_groups),
            "train/kept_groups": float(len(ro.completions) // group),  # trained on (equal on every rank)
            "train/reward_errors": float(self.reward_errors.count),
            "train/tokens_per_s": tokens / (time.perf_counter() - start),
            "train/lr": self.optimizers().param_groups[0]["lr"],
            **metrics,
        }
        self.log_dict({k: float(v) for k, v in logs.items()}, on_step=True, batch_size=len(batch))
        self.log(
            "reward", float(first.mean()), prog_bar=True, on_step=True, logger=False, batch_size=len(batch)
        )

    def _optimise(self, ro: RolloutBatch, advantages: torch.Tensor, ref_logp: torch.Tensor | None) -> dict:
        n, width = ro.completion_mask.shape
        mini = self.mini_batch_size or n
        # One pass over one mini-batch is on-policy: old_logp = logp.detach() makes the ratio exactly 1.
        use_behaviour = self.ppo_epochs > 1 or mini < n
        # external sampler with TIS over several passes: trainer log-probs before the updates (ratio and TIS)
        tis_cap = getattr(self.rollout, "tis_cap", None)
        train_old = self._policy_logprobs(ro) if tis_cap is not None and use_behaviour else None  # [N, C]
        opt, sched = self.optimizers(), self.lr_schedulers()
        gen = torch.Generator().manual_seed(self.seed + self.global_step)
        micro_metrics: list[dict] = []
        norms: list[float] = []
        whole_groups = self.logprobs.shared_prefix
        micro_rows = micro_batch_rows(self.micro_batch_size, ro.group_size, whole_groups)
        for _ in range(self.ppo_epochs):
            for idx in minibatch_indices(n, mini, ro.group_size, gen, whole_groups):
                num_seqs, num_tokens = self._global_counts(len(idx), ro.completion_mask[idx].sum())
                step_metrics = [
                    self._micro_step(
                        ro, micro, width, advantages, ref_logp, use_behaviour, num_seqs, num_tokens, train_old
                    )
                    for micro in idx.split(micro_rows)
                ]
                micro_metrics += step_metrics
                loss = sum(float(m["loss"]) for m in step_metrics)
                norm = self.guard.grad_norm(self.policy.parameters())
                if self.guard.allow(loss, norm, self._min_over_ranks):
                    norms.append(float(norm))
                    optimizer_step(opt, sched)  # also drops autocast's cached bf16 weights
                else:
                    self._on_nonfinite_step()
                opt.zero_grad(set_to_none=True)
        keys = micro_metrics[0].keys() if micro_metrics else ()
        out = {f"train/{k}": sum(float(m[k]) for m in micro_metrics) / len(micro_metrics) for k in keys}
        if norms:
            out["train/grad_norm"] = sum(norms) / len(norms)  # before LongAct masking and clipping
        return out

    def _on_nonfinite_step(self) -> None:
        """Skip the update; after ``max_nonfinite_steps`` in a row write a checkpoint and stop."""
        self.log("train/nonfinite_steps", float(self.guard.total), on_step=True)
        log.warning(
            "non-finite loss or gradient: optimizer step skipped (%d in a row)", self.guard.consecutive
        )
        if self.guard.exhausted:
            path = Path(self.trainer.default_root_dir) / "checkpoints" / "nonfinite.ckpt"
            self.trainer.save_checkpoint(path)
            raise NonFiniteError(
                f"{self.guard.consecutive} optimizer steps in a row had a non-finite loss or gradient; "
                f"stopped and saved {path}. Lower module.lr, check the reward function, or raise "
                "module.max_nonfinite_steps."
            )

    def _micro_step(
        self, ro, micro, width, advantages, ref_logp, use_behaviour, num_seqs, num_tokens, train_old=None
    ) -> dict:
        ids, am = ro.input_ids[micro], ro.attention_mask[micro]  # [m, P + C]
        mask = ro.completion_mask[micro].float()  # [m, C]
        # saliency statistics hooks read stats_token_mask: the real tokens of each forward's input
        logp, entropy = self.logprobs(
            self.policy, ids, am, width, self.rollout.temperature, True,
            token_mask_hook=lambda m: setattr(self, "stats_token_mask", m), row_groups=micro // ro.group_size,
        )  # fmt: skip  # [m, C]
        old = ro.behaviour_logp[micro] if use_behaviour else logp.detach()  # [m, C]
        old = train_old[micro] if train_old is not None else old  # [m, C]
        ref = ref_logp[micro] if ref_logp is not None else None  # [m, C]
        weights, tis_metrics, tis_cap = None, {}, getattr(self.rollout, "tis_cap", None)
        if tis_cap is not None:  # external sampler: [m, C] token weights min(pi_train_old / pi_engine, cap)
            weights, tis_metrics = truncated_is_weights(old, ro.behaviour_logp[micro], mask, tis_cap)
        loss, metrics = self.algorithm.loss(
            logp, old, ref, advantages[micro], mask, num_seqs=num_seqs, num_tokens=num_tokens,
            token_weights=weights, entropy=entropy,
        )  # fmt: skip
        # DDP/FSDP average gradients over ranks while the counts are global: scale back to their sum
        self.manual_backward(loss * self.trainer.world_size)
        entropy = masked_mean(entropy.detach(), mask)
        return {"loss": loss.detach(), "entropy": entropy, **metrics, **tis_metrics}

    def on_before_optimizer_step(self, optimizer) -> None:
        """Clip gradients; callbacks' hooks (gradient masking) have already run."""
        if self.max_grad_norm > 0:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm"
            )

    # ------------------------------------------------------------- validation
    def validation_step(self, batch: list[dict], batch_idx: int) -> None:
        """Greedy decoding on held-out prompts, scored by the task reward (as ``evaluate.py`` does)."""
        result = evaluate_batch(
            self.rollout, self.policy, self.tokenizer, batch, self.reward_fn,
            max_new_tokens=self.val_max_new_tokens, errors=self.reward_errors,
        )  # fmt: skip
        batch, scores = drop_padding(batch, result.scores)  # a rank's padding sample (see WithPadding)
        if not batch:
            return
        if self.val_metric is not None:
            lengths = [int(s.get("target_length", -1)) for s in batch]
            self.val_metric.update([s.get("task", "") for s in batch], lengths, scores)
        else:
            self.val_acc_all.update(scores)

    def on_validation_epoch_end(self) -> None:
        """Log ``val/acc``, ``val/acc/<length>`` and ``val/acc/<task>/<length>`` (synced across ranks)."""
        if self.val_metric is not None:
            values = {f"val/{k}": v.float() for k, v in self.val_metric.compute().items()}
            self.val_metric.reset()
        elif self.val_acc_all.update_called:
            values = {"val/acc": self.val_acc_all.compute()}
            self.val_acc_all.reset()
        else:
            return
        self.log_dict(values)
        self.log("val_acc", values["val/acc"], prog_bar=True, logger=False)

    # ------------------------------------------------------------ checkpoint
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Run counters that must survive a resume (the reference model is never saved)."""
        checkpoint["longact_counters"] = {
            "truncated_total": self.truncated_total,
            "reward_errors": self.reward_errors.count,
            **{f"guard_{k}": v for k, v in self.guard.state_dict().items()},
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the counters written by :meth:`on_save_checkpoint`."""
        state = checkpoint.get("longact_counters", {})
        self.truncated_total = int(state.get("truncated_total", 0))
        self.reward_errors.count = int(state.get("reward_errors", 0))
        self.guard.load_state_dict({k: int(state.get(f"guard_{k}", 0)) for k in ("consecutive", "total")})

    # ----------------------------------------------------------------- export
    def on_train_end(self) -> None:
        """Save the trained policy and tokenizer with ``save_pretrained`` into ``export_dir``."""
        if self.export_dir is None:
            return
        # FSDP: every rank takes part in gathering the full weights; rank 0 writes them
        state = full_state_dict(self.policy) if is_sharded(self.policy) else None
        if not self.trainer.is_global_zero:
            return
        self.export_dir.mkdir(parents=True, exist_ok=True)
        self.policy.save_pretrained(self.export_dir, state_dict=state)
        self.tokenizer.save_pretrained(self.export_dir)
