"""Asynchronous rollouts: the engine samples batch k+1 while the learner trains on batch k (Lightning-free).

:class:`AsyncRollouts` runs a producer thread that owns a *sampler copy* of the policy. The trainer
requests batches by index (:meth:`~AsyncRollouts.submit`), publishes its weights after every RL step
(:meth:`~AsyncRollouts.publish`, version ``k + 1`` after step ``k``) and takes the batch of its step
(:meth:`~AsyncRollouts.take`). The producer starts batch ``j`` only once version ``j - max_staleness`` is
published, loading the newest published weights into its copy first, so no token of batch ``j`` lags more
than ``max_staleness`` versions behind the version that trains it (checked again at :meth:`take`).

* ``max_staleness = 0``: batch ``j`` waits for the weights of step ``j - 1``: exactly the synchronous loop
  (same weights, same seeds, the same samples).
* ``max_staleness = 1`` (one-step off-policy): batch ``j + 1`` is sampled by version ``j`` while step ``j``
  trains; the trainer's log-probs and the sampler's differ by one update, which the rollout correction
  (``correction=...``, required) weighs.
* ``round_tokens`` (partial rollouts): generation proceeds in rounds of at most this many tokens per
  completion; between rounds the producer loads newer weights when the trainer published some, so an
  over-long completion is paused at the update and resumed with the new weights. Each token keeps the
  version that sampled it (:class:`~longact_pl.rollout.async_buffer.PartialRollouts`) and its sampler
  log-prob, which is what the per-token correction needs.

Threads, not processes: torch releases the GIL inside its kernels, so the producer's decoding and the
trainer's passes run on different cores. Nothing else may use the global CPU random generator while a
batch is sampled (the HF engine seeds it per batch; the learner draws from its own generators).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from dataclasses import dataclass

import torch
from torch import nn

from longact_pl.rollout.async_buffer import PartialRollouts, VersionedRollout, check_lag
from longact_pl.rollout.batch_builder import build_batch, eos_token_ids, left_pad
from longact_pl.rollout.types import RolloutEngine

log = logging.getLogger(__name__)

MODES = ("sync", "async")
PLACEMENTS = ("colocated", "disaggregated")


class EngineFailure(RuntimeError):
    """The sampling engine failed while producing a batch (the cause is chained)."""


@dataclass(frozen=True)
class AsyncSettings:
    """``rollout.mode`` / ``rollout.max_staleness`` / ``rollout.round_tokens`` / ``rollout.placement``.

    Attributes:
        mode: ``sync`` (sample, then train: the default) or ``async`` (sample the next batch while training).
        max_staleness: Policy versions a trained token may lag behind the trainer (async only).
        round_tokens: Partial rollouts: tokens per completion per round, weights refreshed between rounds
            (``None``: off, a batch is sampled by one version).
        placement: ``colocated`` (a sampler copy in the trainer's process, on its devices) or
            ``disaggregated`` (an engine process per trainer rank: ``rollout/async_remote.py``).
        engine_device: Disaggregated: the engine's device (``cpu``, ``cuda:N``; ``None``: the CPU without
            CUDA, else the first GPU after the node's trainer ranks).

    Raises:
        ValueError: Naming the ``rollout.<field>`` and the fix.
    """

    mode: str = "sync"
    max_staleness: int = 1
    round_tokens: int | None = None
    placement: str = "colocated"
    engine_device: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"rollout.mode must be one of {list(MODES)}, got {self.mode!r}")
        if self.max_staleness < 0:
            raise ValueError(f"rollout.max_staleness must be >= 0, got {self.max_staleness}")
        if self.round_tokens is not None and self.round_tokens < 1:
            raise ValueError(f"rollout.round_tokens must be >= 1 or null (off), got {self.round_tokens}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"rollout.placement must be one of {list(PLACEMENTS)}, got {self.placement!r}")
        if self.mode == "sync" and self.round_tokens is not None:
            raise ValueError(
                f"rollout.round_tokens={self.round_tokens} (partial rollouts) needs rollout.mode=async; "
                "set rollout.mode=async or rollout.round_tokens=null"
            )

    @property
    def is_async(self) -> bool:
        """Whether the next batch is sampled while the trainer trains."""
        return self.mode == "async"


def check_async(rollout, correction, algorithm) -> None:
    """Refuse ``rollout.mode=async`` settings it cannot train with (before anything is loaded).

    Raises:
        ValueError: Naming the field and the fix.
    """
    settings: AsyncSettings | None = getattr(rollout, "schedule", None)
    if settings is None or not settings.is_async:
        return
    from longact_pl.rollout.hf import HFRollout  # (hf.py imports this module)

    if not isinstance(rollout, HFRollout) and settings.placement == "colocated":
        raise ValueError(
            f"rollout.mode=async with rollout.placement=colocated samples with a copy of the policy through "
            f"HF generate; rollout={type(rollout).__name__} runs async in its own process only: set "
            "rollout.placement=disaggregated (or rollout=hf / hf_shared, or rollout.mode=sync; docs/async.md)"
        )
    if correction is None or not correction.active:
        raise ValueError(
            "rollout.mode=async trains on samples of an older policy version: their importance weights need "
            "the rollout correction; set correction=token_tis (or sequence_tis / sequence_mask), or "
            "rollout.mode=sync"
        )
    if getattr(algorithm, "dynamic_sampling", False):
        raise ValueError(
            "rollout.mode=async samples one batch per step ahead of time; algo.dynamic_sampling=true "
            "(more rounds when groups are dropped) is not supported with it: set algo.dynamic_sampling=false "
            "or rollout.mode=sync"
        )


def generate_in_rounds(
    engine: RolloutEngine,
    model: nn.Module,
    tokenizer,
    prompts: list[list[int]],
    seed: int,
    round_tokens: int,
    version: callable,
    refresh: callable,
) -> tuple:
    """Sample ``prompts`` in rounds of ``round_tokens``, refreshing the weights between rounds.

    Args:
        engine: The rollout engine (its ``group_size`` / ``max_new_tokens``).
        model: The sampler copy.
        tokenizer: Its tokenizer.
        prompts: B prompts.
        seed: Seed of the first round; round ``r`` uses ``seed + 7919 * r``.
        round_tokens: Tokens per completion per round.
        version: ``() -> int``: the version ``model`` holds now.
        refresh: ``() -> None``: load newer published weights into ``model`` (between rounds).

    Returns:
        ``(RolloutBatch, token_versions [N, C])``.
    """
    eos = eos_token_ids(model, tokenizer)
    state = PartialRollouts(prompts, engine.group_size, engine.max_new_tokens, eos)
    first = engine.generate(model, tokenizer, prompts, seed=seed, max_new_tokens=round_tokens)
    state.add_round(list(range(len(state.done))), first, version())
    single = copy.copy(engine)  # continuations: one completion per (prompt + tokens so far)
    single.group_size = 1
    while rows := state.running():
        refresh()  # the pause: a newer published version takes over from here
        budget = min(round_tokens, min(state.room(r) for r in rows))
        more = single.generate(
            model, tokenizer, [state.row_prompt(r) for r in rows], seed=seed + 7919 * state.rounds,
            max_new_tokens=budget,
        )  # fmt: skip
        state.add_round(rows, more, version())
    tokens, logps, versions, lengths = state.finish()  # [N, C] x3, [N]
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)  # [B, P]
    batch = build_batch(ids, mask, tokens, logps, engine.group_size, eos, tokenizer, lengths)
    versions = torch.where(batch.completion_mask.bool(), versions, -1)  # [N, C]
    return batch, versions


# nn.Module's hook registries (cleared on the sampler copy)
HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def sampler_copy(policy: nn.Module) -> nn.Module:
    """A copy of ``policy`` for sampling (eval mode), without its module hooks.

    The hooks belong to the trainer's model (LongAct's saliency statistics observe training forwards);
    sampling forwards in the producer thread must not reach them.
    """
    # requires_grad stays as it is: turning it off changes CPU kernels' rounding (1e-6 in the log-probs),
    # and sampling runs without a graph anyway
    sampler = copy.deepcopy(policy).eval()
    for module in sampler.modules():
        for name in HOOK_DICTS:
            hooks = getattr(module, name, None)
            if hooks is not None:
                hooks.clear()
    return sampler


class AsyncRollouts:
    """A producer thread that samples requested batches with a copy of the policy, version-tagged.

    Args:
        engine: The rollout engine (HF ``generate`` on the sampler copy).
        tokenizer: The policy's tokenizer.
        policy: The policy at start (version ``start_version``); copied once into the sampler.
        settings: ``max_staleness`` and ``round_tokens``.
        start_version: The version of ``policy`` now.
        threads: Torch intra-op threads of the producer thread (``None``: the creating thread's
            ``torch.get_num_threads()``). OpenMP's thread count is per thread: a new thread would otherwise
            use one per core whatever ``torch.set_num_threads`` said, and its spinning workers take the
            trainer's cores.
    """

    def __init__(
        self,
        engine: RolloutEngine,
        tokenizer,
        policy: nn.Module,
        settings: AsyncSettings,
        start_version: int = 0,
        threads: int | None = None,
    ) -> None:
        self.engine, self.tokenizer, self.settings = engine, tokenizer, settings
        self.threads = threads or torch.get_num_threads()
        self.sampler = sampler_copy(policy)
        self._sampler_version = start_version
        self._published = start_version
        self._next_index = start_version  # batches are sampled in index order, the first at start_version
        # the hand-over buffer: publish copies into it, the producer loads from it. On CPU it is kept (a fresh
        # clone per publish cost 6x the copy, in page faults, on the trainer's critical path); on a GPU it is
        # freed once loaded (the caching allocator makes the next one cheap, and the training step gets the
        # memory back in the meantime)
        self._staging: dict[str, torch.Tensor] | None = None
        self._keep_staging = all(p.device.type == "cpu" for p in self.sampler.parameters())
        self._staging_lock = threading.Lock()
        self._pending = False  # the staging buffer holds a version the sampler has not loaded
        self._cond = threading.Condition()
        self._requests: dict[int, tuple[list[list[int]], int]] = {}  # index -> (prompts, seed), to sample
        self._results: dict[int, VersionedRollout | BaseException] = {}
        self._submitted: dict[int, list[list[int]]] = {}
        self._closed = False
        self.busy_s = 0.0  # producer seconds spent generating
        self._thread = threading.Thread(target=self._run, name="async-rollouts", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ trainer side
    @property
    def version(self) -> int:
        """The newest published version."""
        return self._published

    @torch.no_grad()
    def publish(self, policy: nn.Module) -> int:
        """Publish ``policy``'s weights as the next version (a copy: the trainer keeps training its own).

        Returns:
            The new version.
        """
        with self._staging_lock:  # waits only while the producer loads the previous version from it
            if self._staging is None:
                self._staging = {k: v.detach().clone() for k, v in policy.state_dict().items()}
            else:
                for name, value in policy.state_dict().items():
                    self._staging[name].copy_(value)
            with self._cond:  # inside the staging lock: a load sees the data and its version together
                self._pending = True
                self._published += 1
                self._cond.notify_all()
                return self._published

    def submit(self, index: int, prompts: list[list[int]], seed: int) -> None:
        """Request batch ``index`` (trained at version ``index``) of ``prompts``, sampled with ``seed``."""
        with self._cond:
            if index in self._submitted:
                return
            self._submitted[index] = [list(p) for p in prompts]
            self._requests[index] = (prompts, seed)
            self._cond.notify_all()

    def take(self, index: int, prompts: list[list[int]], seed: int) -> VersionedRollout:
        """Batch ``index``, waiting for it (requesting it first when nobody did); lag checked.

        Raises:
            EngineFailure: The producer failed (its error chained).
            RuntimeError: ``prompts`` differ from the request.
            StalenessError: A token lags more than ``max_staleness`` versions.
        """
        if index < self._next_index and index not in self._submitted:
            raise RuntimeError(f"batch {index} comes before the next one to sample ({self._next_index})")
        self.submit(index, prompts, seed)
        with self._cond:
            if self._submitted[index] != [list(p) for p in prompts]:
                raise RuntimeError(f"batch {index} was requested with other prompts than the step trains on")
            while index not in self._results:
                self._cond.wait()
            result = self._results.pop(index)
            del self._submitted[index]
        if isinstance(result, BaseException):
            raise EngineFailure(
                f"the rollout engine failed while sampling batch {index} ({type(result).__name__}: "
                f"{result}); nothing of this step was applied"
            ) from result
        check_lag(result, self._published, self.settings.max_staleness)
        return result

    def close(self, wait_s: float = 60.0) -> None:
        """Stop the producer (a batch being sampled is finished first, then dropped).

        Args:
            wait_s: How long to wait for the thread to end (0: signal it and return).
        """
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if wait_s > 0:
            self._thread.join(timeout=wait_s)

    # ------------------------------------------------------------------ producer side
    @torch.no_grad()
    def _refresh(self) -> None:
        """Load the newest published weights into the sampler copy (the producer's thread only)."""
        with self._staging_lock:  # a publish waits for this load (the buffer holds the newest version)
            with self._cond:
                pending, version = self._pending, self._published
                self._pending = False
            if pending:
                self.sampler.load_state_dict(self._staging)
                self._sampler_version = version
                if not self._keep_staging:
                    self._staging = None

    def _next_request(self) -> tuple[int, list[list[int]], int] | None:
        """The next request to sample, waiting for one; ``None`` once closed.

        Batches are sampled in index order (a request for ``j + 1`` made before the one for ``j`` waits);
        batch ``j`` starts once version ``j - max_staleness`` is published (bounded staleness).
        """
        with self._cond:
            while not self._closed:
                index = self._next_index
                if index in self._requests and self._published >= index - self.settings.max_staleness:
                    self._next_index += 1
                    return (index, *self._requests.pop(index))
                self._cond.wait()
            return None

    def _run(self) -> None:
        torch.set_num_threads(self.threads)  # this thread's OpenMP team (not inherited from the creator)
        while (request := self._next_request()) is not None:
            index, prompts, seed = request
            try:
                result = self._sample(index, prompts, seed)
            except BaseException as err:  # handed to the trainer, which stops the run
                log.error("async rollouts: sampling batch %d failed: %r", index, err)
                result = err
            with self._cond:
                self._results[index] = result
                self._cond.notify_all()

    def _sample(self, index: int, prompts: list[list[int]], seed: int) -> VersionedRollout:
        start = time.perf_counter()
        self._refresh()
        rounds = self.settings.round_tokens
        if rounds is None or rounds >= self.engine.max_new_tokens:
            batch = self.engine.generate(self.sampler, self.tokenizer, prompts, seed=seed)
            versions = torch.where(batch.completion_mask.bool(), self._sampler_version, -1)  # [N, C]
        else:
            batch, versions = generate_in_rounds(
                self.engine, self.sampler, self.tokenizer, prompts, seed, rounds,
                lambda: self._sampler_version, self._refresh,
            )  # fmt: skip
        end = time.perf_counter()
        self.busy_s += end - start
        return VersionedRollout(index, batch, versions, end - start, start, end)
