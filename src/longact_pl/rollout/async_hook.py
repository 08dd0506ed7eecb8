"""The training step's side of ``rollout.mode=async``: which engine samples a step, and what follows it.

``LongActModule`` owns one :class:`AsyncStep` (declared in its ``__init__``) and calls it at three declared
points: :meth:`AsyncStep.engine` for the engine of a step (in sync mode the rollout engine itself; in async
mode a :class:`PrefetchedEngine` whose ``generate`` hands over the batch the producer sampled for this
step, after requesting the next ``depth`` steps' batches, whose prompts a second pass over the training
loader tells: :class:`Lookahead`), :meth:`AsyncStep.after_step` to publish the new weights and add the
``train/async/*`` metrics, and :meth:`AsyncStep.close` at the end of fit.

Every batch Lightning hands the step is the batch trained at that step, so Lightning's batch count (which
a checkpoint keeps) counts trained samples exactly: batches sampled ahead and not yet trained when the run
stops (SIGTERM, a crash) are dropped and sampled again after the resume, never trained twice or lost.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable

import lightning as L
from torch import nn

from longact_pl.metric_reduce import Metric
from longact_pl.rollout.async_buffer import VersionedRollout, staleness_metrics
from longact_pl.rollout.async_loop import AsyncSettings, EngineFailure
from longact_pl.rollout.producers import Producer, make_rollouts
from longact_pl.rollout.types import RolloutBatch


def step_seed(seed: int, index: int) -> int:
    """The sampling seed of step ``index`` (the synchronous step's formula, by RL step)."""
    return seed * 1_000_003 + index * 101


def _ids(batch: list[dict]) -> list[list[int]]:
    return [list(s["prompt_ids"]) for s in batch]


class Lookahead:
    """The batches Lightning will hand the next steps, from a second pass over the trainer's training loader.

    The loader's order is a seeded permutation per epoch that resumes mid-epoch
    (:class:`~longact_pl.data.order.ResumableOrder`), so a second iterator over it yields the same batches.
    It is aligned on the current batch's prompts (searched from the start of a fresh pass when they differ:
    first step, new epoch, resume); the lookahead stops at an epoch's last batch (the first step of the next
    epoch samples its batch when it asks: no overlap for that step).

    Args:
        loader: ``() -> iterable of batches``: the trainer's training loader.
    """

    def __init__(self, loader: Callable[[], Iterable | None]) -> None:
        self.loader = loader
        self._it = None
        self._queue: deque[list[dict]] = deque()  # the batches after the last one seen, in order

    def ahead(self, batch: list[dict], depth: int) -> list[list[dict]]:
        """Up to ``depth`` batches that follow ``batch`` (fewer at an epoch's end; none: unknown)."""
        key = _ids(batch)
        if self._queue and _ids(self._queue[0]) == key:
            self._queue.popleft()
        else:  # (re)align a fresh pass on this batch
            self._queue.clear()
            self._it = iter(self.loader() or ())
            if not any(_ids(b) == key for b in self._it):
                self._it = None
        while self._it is not None and len(self._queue) < depth:
            nxt = next(self._it, None)
            if nxt is None:
                self._it = None
            else:
                self._queue.append(nxt)
        return list(self._queue)[:depth]

    def after(self, batch: list[dict]) -> list[dict] | None:
        """The batch after ``batch`` (``None``: none, or it cannot be told)."""
        nxt = self.ahead(batch, 1)
        return nxt[0] if nxt else None


class PrefetchedEngine:
    """An engine whose ``generate`` returns the batch the producer sampled for this step.

    Other attributes (``group_size``, ``temperature``, ...) are the rollout engine's.
    """

    def __init__(self, engine, rollouts: Producer, index: int, seed: int, on_failure=None) -> None:
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


class AsyncStep:
    """The async rollouts of one module: the producer of the current fit, its step counter, the lookahead.

    Sync mode (``settings`` ``None`` or ``mode=sync``): :meth:`engine` returns the rollout engine and the
    other calls do nothing.

    Args:
        settings: The rollout engine's ``rollout.mode`` / ``max_staleness`` / ... (``None``: sync).
        seed: The run's base sampling seed.
    """

    def __init__(self, settings: AsyncSettings | None, seed: int) -> None:
        self.settings, self.seed = settings, seed
        self.producer: Producer | None = None  # started at the first step of a fit, stopped at its end
        self.index = 0  # the RL step (this process's count) of the next batch to train
        self.lookahead: Lookahead | None = None
        self.current: PrefetchedEngine | None = None

    @property
    def is_async(self) -> bool:
        """Whether the next batches are sampled while the trainer trains."""
        return self.settings is not None and self.settings.is_async

    @property
    def depth(self) -> int:
        """Batches requested ahead of the one being trained: ``max_staleness`` (at least 1)."""
        return max(1, self.settings.max_staleness) if self.is_async else 0

    def engine(
        self,
        rollout,
        batch: list[dict],
        policy: nn.Module,
        tokenizer,
        step: int,
        trainer: L.Trainer,
        save_checkpoint: Callable[[str], object] | None = None,
    ):
        """The engine that samples this step: ``rollout`` (sync) or this step's prefetched batch (async).

        Args:
            rollout: The rollout engine.
            batch: This step's prompt dicts.
            policy: The trained policy (copied into the sampler at the first step).
            tokenizer: Its tokenizer.
            step: ``global_step`` (the first step's version).
            trainer: The Lightning trainer (its training loader, callbacks, strategy and ``max_steps``).
            save_checkpoint: ``(name) -> path``: writes a checkpoint when the engine failed (before this
                step applied anything), named in the error.
        """
        if not self.is_async:
            return rollout
        if self.producer is None:
            check_placement(policy, trainer)
            # versions count this process's RL steps; the first step trains with version global_step
            self.producer = make_rollouts(rollout, tokenizer, policy, self.settings, step)
            self.index, self.lookahead = step, Lookahead(lambda: trainer.train_dataloader)
            trainer.callbacks.append(CloseOnExit(self))  # stopped on SIGTERM or an error too
        # requested now, sampled while this step trains (each once its version - max_staleness is published);
        # no more than the steps left (skipped steps do not count towards max_steps: this is a lower bound)
        depth = self.depth if trainer.max_steps < 0 else max(0, min(self.depth, trainer.max_steps - step - 1))
        for ahead, nxt in enumerate(self.lookahead.ahead(batch, depth), start=self.index + 1):
            self.producer.submit(ahead, [s["prompt_ids"] for s in nxt], step_seed(self.seed, ahead))
        seed = step_seed(self.seed, self.index)
        self.current = PrefetchedEngine(rollout, self.producer, self.index, seed, save_checkpoint)
        return self.current

    def after_step(self, policy: nn.Module, logs: dict | None = None) -> None:
        """Publish the step's weights (the next version); add ``train/async/*`` to ``logs`` (async only)."""
        if self.producer is None or self.current is None:
            return
        current, self.current = self.current, None
        train_version = self.producer.version
        self.index += 1
        self.producer.publish(policy)
        if logs is None or current.taken is None:
            return
        taken = current.taken
        logs.update(staleness_metrics(taken.token_versions, taken.batch.completion_mask, train_version))
        logs["train/async/wait_s"] = Metric(current.wait_s, "max")
        logs["train/async/generate_s"] = Metric(taken.generate_s, "max")

    def close(self, wait_s: float = 60.0) -> None:
        """Stop the producer (end of fit); batches sampled ahead are dropped."""
        producer, self.producer, self.current, self.lookahead = self.producer, None, None, None
        if producer is not None:
            producer.close(wait_s)


class CloseOnExit(L.Callback):
    """Stops the producer when fit ends or fails (SIGTERM, an error: the module gets no hook for those)."""

    def __init__(self, step: AsyncStep) -> None:
        self.step = step

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """Signal the producer to stop without waiting for the batch it samples."""
        self.step.close(wait_s=0)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        """Stop the producer at the end of fit."""
        self.step.close()


def check_placement(policy: nn.Module, trainer: L.Trainer) -> None:
    """Refuse strategies the producer thread cannot run beside: sharded weights, sequence parallelism.

    Raises:
        ValueError: Naming the setting and the fix.
    """
    from torch.distributed.fsdp import FSDPModule

    if any(isinstance(m, FSDPModule) for m in policy.modules()):
        raise ValueError(
            "rollout.mode=async keeps a full copy of the policy for the sampler thread, which FSDP-sharded "
            "weights do not allow in this version: use strategy=ddp (or one device), or rollout.mode=sync"
        )
    if getattr(trainer.strategy, "sequence_parallel", None) is not None:
        raise ValueError(
            "rollout.mode=async does not run with sequence parallelism in this version: set "
            "rollout.mode=sync or turn sequence parallelism off"
        )
