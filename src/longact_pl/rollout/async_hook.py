"""The training step's side of ``rollout.mode=async``: which engine samples a step, and what follows it.

``LongActModule.training_step`` asks :func:`step_engine` for the engine of its step: in sync mode the rollout
engine itself; in async mode a :class:`PrefetchedEngine` whose ``generate`` hands over the batch the
producer (:class:`~longact_pl.rollout.async_loop.AsyncRollouts`) sampled for this step, after requesting
the *next* step's batch, whose prompts a second pass over the training loader tells (:class:`Lookahead`).
After the update :func:`after_step` publishes the new weights and adds the ``train/async/*`` metrics.

Every batch Lightning hands the step is the batch trained at that step, so Lightning's batch count (which
a checkpoint keeps) counts trained samples exactly: a batch sampled ahead and not yet trained when the run
stops (SIGTERM, a crash) is dropped and sampled again after the resume, never trained twice or lost.
"""

from __future__ import annotations

import time

import lightning as L

from longact_pl.metric_reduce import Metric
from longact_pl.rollout.async_buffer import VersionedRollout, staleness_metrics
from longact_pl.rollout.async_loop import AsyncRollouts, AsyncSettings, EngineFailure, make_rollouts
from longact_pl.rollout.types import RolloutBatch

ATTR = "_async_rollouts"


def step_seed(seed: int, index: int) -> int:
    """The sampling seed of step ``index`` (the synchronous step's formula, by RL step)."""
    return seed * 1_000_003 + index * 101


def _ids(batch: list[dict]) -> list[list[int]]:
    return [list(s["prompt_ids"]) for s in batch]


class Lookahead:
    """The batch Lightning will hand the next step, from a second pass over the trainer's training loader.

    The loader's order is a seeded permutation per epoch that resumes mid-epoch
    (:class:`~longact_pl.data.order.ResumableOrder`), so a second iterator over it yields the same batches.
    It is aligned on the current batch's prompts (searched from the start of a fresh pass when they differ:
    first step, new epoch, resume); at an epoch's last batch there is no next one and the next step samples
    its batch when it asks (no overlap for that step).

    Args:
        loader: ``() -> iterable of batches``: the trainer's training loader.
    """

    def __init__(self, loader) -> None:
        self.loader, self._it, self._peeked = loader, None, None

    def after(self, batch: list[dict]) -> list[dict] | None:
        """The batch after ``batch`` (``None``: none, or it cannot be told)."""
        key = _ids(batch)
        if self._it is None or self._peeked is None or _ids(self._peeked) != key:
            self._it = iter(self.loader() or ())
            if not any(_ids(b) == key for b in self._it):
                self._it = None
                return None
        self._peeked = next(self._it, None)
        if self._peeked is None:
            self._it = None
        return self._peeked


class PrefetchedEngine:
    """An engine whose ``generate`` returns the batch the producer sampled for this step.

    Other attributes (``group_size``, ``temperature``, ...) are the rollout engine's.
    """

    def __init__(self, engine, rollouts: AsyncRollouts, index: int, seed: int, on_failure=None) -> None:
        self._engine, self._rollouts, self._index, self._seed = engine, rollouts, index, seed
        self._on_failure = on_failure
        self.taken: VersionedRollout | None = None
        self.wait_s = 0.0

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def generate(self, policy, tokenizer, prompts, greedy=False, seed=0, max_new_tokens=None) -> RolloutBatch:
        """The batch the producer sampled ahead for this step (with the step's seed, given at request)."""
        if self.taken is not None:
            raise RuntimeError("rollout.mode=async samples one batch per step (no further rounds)")
        start = time.perf_counter()
        try:
            self.taken = self._rollouts.take(self._index, prompts, self._seed)
        except EngineFailure as err:  # before anything of this step is applied: a clean resume point
            path = self._on_failure("async_engine_failed.ckpt") if self._on_failure else None
            where = f"; resume from the checkpoint {path}" if path else ""
            raise EngineFailure(f"{err}{where}") from err.__cause__
        self.wait_s = time.perf_counter() - start
        return self.taken.batch


class AsyncState:
    """The producer and the step counter of one fit (kept on the module)."""

    def __init__(self, rollouts: AsyncRollouts, first_index: int, lookahead: Lookahead) -> None:
        self.rollouts, self.index, self.lookahead = rollouts, first_index, lookahead
        self.current: PrefetchedEngine | None = None


def step_engine(module, batch: list[dict], save_checkpoint=None):
    """The engine that samples this step: ``module.rollout`` (sync) or this step's prefetched batch (async).

    Args:
        module: The ``LongActModule`` (its ``rollout``, ``policy``, ``tokenizer``, ``seed``, ``trainer``).
        batch: This step's prompt dicts.
        save_checkpoint: ``(name) -> path``: writes a checkpoint when the engine failed (before this step
            applied anything), named in the error.
    """
    settings: AsyncSettings | None = getattr(module.rollout, "schedule", None)
    if settings is None or not settings.is_async:
        return module.rollout
    state: AsyncState | None = getattr(module, ATTR, None)
    if state is None:
        check_placement(module)
        # versions count this process's RL steps; the first step trains with version global_step
        rollouts = make_rollouts(
            module.rollout, module.tokenizer, module.policy, settings, module.global_step
        )
        trainer = module.trainer
        state = AsyncState(rollouts, module.global_step, Lookahead(lambda: trainer.train_dataloader))
        setattr(module, ATTR, state)
        trainer.callbacks.append(CloseOnExit(module))  # stopped on SIGTERM or an error too
    index = state.index
    nxt = state.lookahead.after(batch)
    if nxt is not None:  # requested now, sampled while this step trains (once its version is published)
        state.rollouts.submit(index + 1, [s["prompt_ids"] for s in nxt], step_seed(module.seed, index + 1))
    seed = step_seed(module.seed, index)
    state.current = PrefetchedEngine(module.rollout, state.rollouts, index, seed, save_checkpoint)
    return state.current


def after_step(module, logs: dict | None = None) -> None:
    """Publish the step's weights (the next version) and add ``train/async/*`` to ``logs`` (async only)."""
    state: AsyncState | None = getattr(module, ATTR, None)
    if state is None or state.current is None:
        return
    current, state.current = state.current, None
    train_version = state.rollouts.version
    state.index += 1
    state.rollouts.publish(module.policy)
    if logs is None or current.taken is None:
        return
    taken = current.taken
    logs.update(staleness_metrics(taken.token_versions, taken.batch.completion_mask, train_version))
    logs["train/async/wait_s"] = Metric(current.wait_s, "max")
    logs["train/async/generate_s"] = Metric(taken.generate_s, "max")


def close(module, wait_s: float = 60.0) -> None:
    """Stop the producer of ``module`` (end of fit); a batch sampled ahead is dropped."""
    state: AsyncState | None = getattr(module, ATTR, None)
    if state is not None:
        setattr(module, ATTR, None)
        state.rollouts.close(wait_s)


class CloseOnExit(L.Callback):
    """Stops the producer when fit ends or fails (SIGTERM, an error: the module gets no hook for those)."""

    def __init__(self, module) -> None:
        self.module = module

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """Signal the producer to stop without waiting for the batch it samples."""
        close(self.module, wait_s=0)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        """Stop the producer at the end of fit."""
        close(self.module)


def check_placement(module) -> None:
    """Refuse strategies the producer thread cannot run beside: sharded weights, sequence parallelism.

    Raises:
        ValueError: Naming the setting and the fix.
    """
    from torch.distributed.fsdp import FSDPModule

    strategy = getattr(module.trainer, "strategy", None)
    if isinstance(module.policy, FSDPModule) or any(
        isinstance(m, FSDPModule) for m in module.policy.modules()
    ):
        raise ValueError(
            "rollout.mode=async keeps a full copy of the policy for the sampler thread, which FSDP-sharded "
            "weights do not allow in this version: use strategy=ddp (or one device), or rollout.mode=sync"
        )
    if getattr(strategy, "sequence_parallel", None) is not None:
        raise ValueError(
            "rollout.mode=async does not run with sequence parallelism in this version: set "
            "rollout.mode=sync or turn sequence parallelism off"
        )
