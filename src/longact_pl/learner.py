"""The RL update of one step, outside Lightning: no-grad log-prob passes, then epochs x mini x micro-batches.

:class:`Learner` holds the rules of the update: which old log-probs the ratio uses, how the loss is normalised
across micro-batches and data-parallel ranks, when an optimizer step is skipped. What belongs to the
training framework comes in as arguments: the collectives (:class:`~longact_pl.distributed.DistOps`), and
backward and the optimizer step (:class:`OptimizerCalls`; in ``LongActModule`` Lightning's
``manual_backward`` and ``LightningOptimizer.step``, so clipping and precision plugins run as they would in
any Lightning module). Components that ride on the update (LongAct's gradient masking and statistics)
register a :class:`~longact_pl.learner_hooks.LearnerHook` with :meth:`Learner.add_hook`.

Two places are meant to be replaced by longer-context variants: how rows are cut into micro-batches
(:attr:`Learner.micro_batches`, any :data:`MicroBatcher`) and the log-prob pass (:meth:`Learner.logprobs_of`,
the only caller of the model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from longact_pl.algos.correction import RolloutCorrection
from longact_pl.algos.losses import masked_mean
from longact_pl.algos.protocol import Algorithm
from longact_pl.distributed import DistOps, LocalOps
from longact_pl.guards import NonFiniteGuard
from longact_pl.learner_hooks import LearnerHook, LearnerHooks
from longact_pl.metric_reduce import Metric, micro_batch_metrics
from longact_pl.minibatch import (
    RowMicroBatches,
    TokenMicroBatches,
    check_token_budget,
    minibatch_indices,
    prompt_owners,
    take,
)
from longact_pl.ops.policy_logprobs import LogprobCall, LogprobPass
from longact_pl.rollout.types import RolloutBatch

# (row indices [m] of one mini-batch or pass, the rollouts, whole_groups) -> row indices of each micro-batch
MicroBatcher = Callable[[torch.Tensor, RolloutBatch, bool], list[torch.Tensor]]


@dataclass
class TrainBatch:
    """What one RL step trains on.

    Attributes:
        rollouts: ``[N, ...]`` rollouts; rows ``g*G .. g*G + G - 1`` share a prompt.
        advantages: ``[N]`` per-sequence advantages.
        ref_logp: ``[N, C]`` reference-model log-probs (``None``: no KL term).
        old_logp: ``[N, C]`` trainer log-probs before this step's updates, when an external engine sampled
            and the step takes several optimizer steps (else ``None``: the one pass's ``logp.detach()`` are
            those); they feed the rollout correction and its metrics, and the ratio when a correction is on.
    """

    rollouts: RolloutBatch
    advantages: torch.Tensor
    ref_logp: torch.Tensor | None = None
    old_logp: torch.Tensor | None = None


@dataclass
class OptimizerCalls:
    """How the learner drives the optimizer (the framework's calls, so its hooks and plugins run).

    Attributes:
        backward: Backward of a scalar loss (``LightningModule.manual_backward``).
        step: One optimizer (and learning-rate schedule) step; ``on_before_optimizer_step`` hooks run in it.
        zero_grad: Drop the gradients (after every mini-batch, stepped or skipped).
        skip: Called instead of ``step`` when the guard rejects a step (non-finite loss or gradient).
    """

    backward: Callable[[torch.Tensor], None]
    step: Callable[[], None]
    zero_grad: Callable[[], None]
    skip: Callable[[], None]


def global_counts(
    num_seqs: int, num_tokens: torch.Tensor, dist: DistOps
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences and valid tokens of one mini-batch, summed over data-parallel ranks (``[]``, ``[]``)."""
    counts = torch.stack([torch.tensor(float(num_seqs)), num_tokens.detach().float().cpu()])  # [2]
    counts = dist.sum(counts)  # [2]
    return counts[0], counts[1]


class Learner:
    """Policy-gradient updates from one batch of rollouts.

    Per step, :meth:`prepare` runs the no-grad passes (reference log-probs; trainer log-probs before the
    update for an external sampler) and computes the advantages, and :meth:`update` runs ``ppo_epochs``
    passes over mini-batches of ``mini_batch_size`` rows, one optimizer step each, whose gradient accumulates
    over micro-batches.

    Normalisation: each micro-batch's loss is divided by the mini-batch's sequence and token counts summed
    over ranks (:func:`global_counts`) and multiplied by the world size before backward, because DDP and
    FSDP average gradients over ranks. The summed micro-batch gradients then equal one process training
    on the union of the ranks' mini-batches, for every loss aggregation (DAPO's token mean too).

    Old log-probs: one pass over one mini-batch is on-policy and uses ``logp.detach()`` (ratio exactly 1);
    several epochs or mini-batches use the rollouts' behaviour log-probs, or with an active rollout correction
    the trainer's own log-probs before the update (the sampling engine's then only enter its weights).

    Rollout correction (external samplers, ``external=True``): each token's policy loss is weighted by
    ``correction.weights(trainer_old, sampler)``, and the mismatch metrics of the whole batch are logged as
    ``train/correction/*`` every step, whether a correction is on or not.

    Args:
        algorithm: Advantages (after ``kl_reward``) and the loss (token weights, entropy: see ``Algorithm``).
        logprobs: The log-prob pass, planned for the model (:meth:`LogprobPass.for_model
            <longact_pl.ops.policy_logprobs.LogprobPass.for_model>`).
        guard: Decides whether an optimizer step runs (non-finite loss or gradient).
        temperature: Sampling temperature of the rollouts (log-probs are taken at it).
        ppo_epochs: Passes over one rollout batch.
        mini_batch_size: Rows per optimizer step (0 = the whole rollout batch).
        micro_batch_size: Rows per forward/backward (see :class:`RowMicroBatches`).
        micro_batch_tokens: Token budget per forward/backward instead of a row count
            (:class:`~longact_pl.minibatch.TokenMicroBatches`; ``None``: ``micro_batch_size`` rows).
        correction: Importance weights for the sampler's mismatch (``None``: none, metrics only).
        external: The rollouts come from an external sampler (vLLM): log the mismatch metrics, allow a
            correction.
        micro_batches: How rows are cut into micro-batches (default :class:`RowMicroBatches`).
        max_prompt_tokens: Longest prompt of the run, to check ``micro_batch_tokens`` (``None``: unchecked).
        max_new_tokens: Longest completion, to check ``micro_batch_tokens`` (``None``: unchecked).
    """

    def __init__(
        self,
        algorithm: Algorithm,
        logprobs: LogprobPass,
        guard: NonFiniteGuard,
        temperature: float = 1.0,
        ppo_epochs: int = 1,
        mini_batch_size: int = 0,
        micro_batch_size: int = 4,
        correction: RolloutCorrection | None = None,
        external: bool = False,
        micro_batches: MicroBatcher | None = None,
        micro_batch_tokens: int | None = None,
        max_prompt_tokens: int | None = None,
        max_new_tokens: int | None = None,
    ) -> None:
        if ppo_epochs < 1:
            raise ValueError(f"module.learner.ppo_epochs must be >= 1, got {ppo_epochs}")
        if mini_batch_size < 0:
            raise ValueError(f"module.learner.mini_batch_size must be >= 0, got {mini_batch_size}")
        if correction is not None and correction.active and not external:
            raise ValueError(f"correction.level={correction.level}: a correction needs an external sampler")
        self.algorithm, self.logprobs, self.guard = algorithm, logprobs, guard
        self.temperature = temperature
        self.ppo_epochs, self.mini_batch_size = ppo_epochs, mini_batch_size
        self.correction = correction or RolloutCorrection()  # the default only measures
        self.external = external
        if micro_batch_tokens is not None:  # the longest prompt and completion must fit one micro-batch
            check_token_budget(micro_batch_tokens, max_prompt_tokens, max_new_tokens or 0)
        if micro_batches is None and micro_batch_tokens is not None:
            micro_batches = TokenMicroBatches(micro_batch_tokens, packed=lambda: logprobs.plan.pack)
        self.micro_batches: MicroBatcher = micro_batches or RowMicroBatches(micro_batch_size)
        self.hooks = LearnerHooks()  # called in update(): see add_hook

    def add_hook(self, hook: LearnerHook) -> None:
        """Register ``hook`` with the update loop (when it is called: :mod:`longact_pl.learner_hooks`)."""
        self.hooks.add(hook)

    def remove_hook(self, hook: LearnerHook) -> None:
        """Unregister ``hook`` (no-op if it is not registered)."""
        self.hooks.remove(hook)

    def uses_behaviour(self, num_rows: int) -> bool:
        """Whether the ratio needs stored old log-probs: more than one optimizer step per rollout batch."""
        return self.ppo_epochs > 1 or (self.mini_batch_size or num_rows) < num_rows

    # ------------------------------------------------------------------ log-probs
    def logprobs_of(
        self,
        model: nn.Module,
        rollouts: RolloutBatch,
        rows: torch.Tensor,
        dist: DistOps | None = None,
        pad_spans: int = 0,
        count_prompts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Completion log-probs ``[r, C]`` (and entropy ``[r, C]`` or ``None``) of ``rows`` under a model.

        Completions are cut to the rows' last real column (exact: later columns are padding in every row)
        and the results padded back to C with zeros; the pass is split over ``dist``'s sequence-parallel
        group, if any; ``pad_spans``: lock-step dummies (see ``LogprobCall``). With ``count_prompts``
        (``[r]``: which groups' prompts the hooks count) it is a training pass: it returns the entropy
        too, and tells the hooks its forwards (``on_forward``).
        """
        width, full = rollouts.prompt_width, rollouts.completion_mask.shape[1]
        mask = take(rollouts.attention_mask, rows)  # [r, P + C]
        used = mask[:, width:].any(0).nonzero()  # real completion columns
        keep = int(used[-1]) + 1 if len(used) else 1
        training = count_prompts is not None
        ids = take(rollouts.input_ids, rows)[:, : width + keep]  # [r, P + keep]
        call = LogprobCall(
            ids, mask[:, : width + keep], keep, self.temperature, with_entropy=training,
            row_groups=rows // rollouts.group_size, count_prompts=count_prompts, pad_spans=pad_spans,
        )  # fmt: skip
        hook = self.hooks.token_mask_hook if training else None
        sp = dist.sequence_parallel if dist is not None else None
        logp, entropy = self.logprobs(model, call, hook, sp)  # [r, keep]
        pad = (0, full - keep)
        return F.pad(logp, pad), (F.pad(entropy, pad) if entropy is not None else None)  # [r, C]

    def plan(
        self, rows: torch.Tensor, rollouts: RolloutBatch, dist: DistOps
    ) -> list[tuple[torch.Tensor, int]]:
        """Micro-batches of ``rows`` with the lock-step dummies each needs: ``[(rows [r], pad_spans)]``.

        Under DDP/FSDP every forward and backward is a collective, but token budgets give ranks different
        numbers of micro-batches, and spans per micro-batch. The ranks agree (one ``dist.max``) on the most
        spans of each micro-batch index; a rank with fewer pads that micro-batch with dummy spans, and a
        rank with fewer micro-batches runs empty ones (``rows`` of length 0) of dummies only.
        """
        plan = self.logprobs.plan
        parts = self.micro_batches(rows, rollouts, plan.shared)
        if dist.world_size == 1:
            return [(part, 0) for part in parts]
        spans = torch.zeros(len(rows), dtype=torch.long)  # [m]: a micro-batch holds >= 1 row
        spans[: len(parts)] = torch.tensor([plan.passes(p // rollouts.group_size) for p in parts])
        agreed = dist.max(spans)  # [m] (every rank has m rows: the same mini-batch size)
        parts += [rows[:0]] * (int((agreed > 0).sum()) - len(parts))
        return [(part, int(agreed[i] - spans[i])) for i, part in enumerate(parts)]

    @torch.no_grad()
    def no_grad_logprobs(
        self, model: nn.Module, rollouts: RolloutBatch, dist: DistOps | None = None
    ) -> torch.Tensor:
        """Log-probs ``[N, C]`` of every row, micro-batch by micro-batch, without a graph."""
        rows = torch.arange(rollouts.completion_mask.shape[0])  # [N]
        dist = dist or LocalOps()
        parts = self.plan(rows, rollouts, dist)
        return torch.cat([self.logprobs_of(model, rollouts, part, dist, pad)[0] for part, pad in parts])

    def prepare(
        self,
        policy: nn.Module,
        reference: nn.Module | None,
        rollouts: RolloutBatch,
        rewards: torch.Tensor,
        dist: DistOps | None = None,
    ) -> TrainBatch:
        """Run the no-grad passes a step needs (each a collective under FSDP: every rank runs them).

        Args:
            policy: The policy, before this step's updates.
            reference: The frozen reference model (``None``: no KL term, no pass).
            rollouts: ``[N, ...]``.
            rewards: ``[N]`` shaped rewards; the advantages are computed here, after the KL penalty when the
                algorithm puts it in the reward (it needs the reference log-probs).
            dist: Data-parallel collectives (ranks agree on their micro-batches; ``None``: one process).
        """
        ref_logp = None
        if reference is not None:
            ref_logp = self.no_grad_logprobs(reference, rollouts, dist)  # [N, C]
        old_logp = None
        if self.external and self.uses_behaviour(rollouts.completion_mask.shape[0]):
            old_logp = self.no_grad_logprobs(policy, rollouts, dist)  # [N, C]
        rewards = self.algorithm.kl_reward(
            rewards, rollouts.behaviour_logp, ref_logp, rollouts.completion_mask
        )
        advantages = self.algorithm.advantages(rewards, rollouts.group_size)  # [N]
        return TrainBatch(rollouts, advantages, ref_logp, old_logp)

    # ------------------------------------------------------------------ update
    def micro_loss(
        self,
        policy: nn.Module,
        batch: TrainBatch,
        rows: torch.Tensor,
        use_behaviour: bool,
        num_seqs: torch.Tensor,
        num_tokens: torch.Tensor,
        dist: DistOps,
        pad_spans: int,
        count_prompts: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Loss of one micro-batch (normalised by the mini-batch's global counts) and its metrics.

        Also returns the trainer's log-probs of the rows before this step's updates (``[m, C]``, detached).

        Args:
            policy: The policy (with gradients).
            batch: The step's batch.
            rows: ``[m]`` row indices of the micro-batch.
            use_behaviour: Take the old log-probs from the batch (else ``logp.detach()``: ratio 1).
            num_seqs: Sequences of the mini-batch over all ranks.
            num_tokens: Valid completion tokens of the mini-batch over all ranks.
            dist: Data-parallel collectives (their sequence-parallel group splits the pass).
            pad_spans: Lock-step dummies (see :meth:`plan`).
            count_prompts: ``[m]`` bool: the rows whose group's prompt the hooks count (see
                :func:`prompt_owners`).
        """
        ro = batch.rollouts
        mask = ro.completion_mask[rows].float()  # [m, C]
        logp, entropy = self.logprobs_of(policy, ro, rows, dist, pad_spans, count_prompts)  # [m, C]
        behaviour = ro.behaviour_logp[rows].to(logp.device)  # [m, C]
        train_old = batch.old_logp[rows] if batch.old_logp is not None else logp.detach()  # [m, C]
        old = logp.detach()  # [m, C]: one on-policy pass
        if use_behaviour:  # a correction compares with the trainer's own old log-probs (decoupled)
            old = train_old if self.correction.active else behaviour  # [m, C]
        ref = batch.ref_logp[rows] if batch.ref_logp is not None else None  # [m, C]
        weights = self.correction.weights(train_old, behaviour, mask) if self.external else None  # [m, C]
        loss, metrics = self.algorithm.loss(
            logp, old, ref, batch.advantages[rows], mask, num_seqs=num_seqs, num_tokens=num_tokens,
            token_weights=weights, entropy=entropy,
        )  # fmt: skip
        metrics = {"loss": loss.detach(), "entropy": masked_mean(entropy.detach(), mask), **metrics}
        return loss, metrics, train_old

    def update(
        self,
        policy: nn.Module,
        batch: TrainBatch,
        optim: OptimizerCalls,
        dist: DistOps,
        generator: torch.Generator,
    ) -> dict[str, float]:
        """``ppo_epochs`` x mini-batches optimizer steps, each accumulating its micro-batches' gradients.

        Args:
            policy: The policy being trained (its parameters' gradients feed the guard).
            batch: From :meth:`prepare`.
            optim: Backward and optimizer calls.
            dist: Data-parallel collectives (global counts, world-size scaling, agreeing on skips).
            generator: Shuffles the mini-batches.

        Returns:
            This rank's ``train/<metric>`` (:func:`micro_batch_metrics`), each a ``Metric`` that knows how
            it combines over ranks; ``train/grad_norm`` (mean over the steps taken, of the gradient applied:
            after the hooks' ``transform_grads``, before clipping); with hooks ``train/grad_norm_pre_mask``
            (before them); with an external sampler ``train/correction/<metric>`` of the whole batch.
        """
        ro = batch.rollouts
        n = ro.completion_mask.shape[0]
        use_behaviour = self.uses_behaviour(n)
        whole_groups = self.logprobs.plan.shared
        # one on-policy pass: the trainer's pre-update log-probs are the pass's own, gathered for the metrics
        train_old = batch.old_logp
        if self.external and train_old is None:
            train_old = torch.zeros_like(ro.behaviour_logp, dtype=torch.float32)  # [N, C]
        micro_metrics: list[tuple[dict[str, torch.Tensor], float]] = []  # (metrics, valid tokens)
        steps = 0
        norms: list[float] = []
        pre_norms: list[float] = []
        for _ in range(self.ppo_epochs):
            for idx in minibatch_indices(
                n, self.mini_batch_size or n, ro.group_size, generator, whole_groups
            ):
                num_seqs, num_tokens = global_counts(len(idx), ro.completion_mask[idx].sum(), dist)
                owners = prompt_owners(idx, ro.group_size, n)  # [N]: each group's prompt counted once
                step_metrics = []
                for rows, pad in self.plan(idx, ro, dist):
                    if len(rows) == 0:  # lock-step: another rank has more micro-batches
                        optim.backward(self.logprobs_of(policy, ro, rows, dist, pad)[0].sum())  # 0
                        continue
                    loss, metrics, old = self.micro_loss(
                        policy, batch, rows, use_behaviour, num_seqs, num_tokens, dist, pad, owners[rows]
                    )
                    if batch.old_logp is None and train_old is not None:
                        train_old[rows] = old.to(train_old.device, train_old.dtype)
                    # DDP/FSDP average gradients over ranks while the counts are global: scale to their sum
                    optim.backward(loss * dist.world_size)
                    step_metrics.append((metrics, float(ro.completion_mask[rows].sum())))
                micro_metrics += step_metrics
                steps += 1
                loss_sum = sum(float(m["loss"]) for m, _ in step_metrics)
                pre_norm = None
                if self.hooks:  # e.g. LongAct zeroes the frozen rows: the guard and norm see what is applied
                    pre_norm = self.guard.grad_norm(policy.parameters())
                    self.hooks.transform_grads(list(policy.parameters()))
                norm = self.guard.grad_norm(policy.parameters())  # of the gradient that is applied
                if self.guard.allow(loss_sum, norm, dist):
                    norms.append(float(norm))
                    pre_norms += [float(pre_norm)] if pre_norm is not None else []
                    optim.step()
                    self.hooks.after_step()
                else:
                    optim.skip()
                optim.zero_grad()
        out = micro_batch_metrics(micro_metrics, steps)
        if norms:  # of the all-reduced gradient: the same on every rank
            out["train/grad_norm"] = Metric(sum(norms) / len(norms), "same")  # after masking, before clipping
        if pre_norms:
            out["train/grad_norm_pre_mask"] = Metric(sum(pre_norms) / len(pre_norms), "same")
        if self.external:
            measured = self.correction.metrics(
                train_old, ro.behaviour_logp.to(train_old.device), ro.completion_mask
            )
            rules = self.correction.metric_rules(ro.completion_mask)
            out.update({f"train/correction/{k}": Metric(v, *rules[k]) for k, v in measured.items()})
        return out
