"""Rollouts from a vLLM engine colocated with training (engine lifecycle: ``rollout/vllm_engine.py``).

The policy's weights are pushed into the engine before the first rollout and after every optimizer step
(``mark_stale`` -> lazy push on the next ``generate``), in shared-memory buckets of ``bucket_mb`` (or, as a
fallback, through one file; see ``rollout/weight_push.py``).

Behaviour log-probs are vLLM's ``processed_logprobs`` of the sampled tokens: ``log_softmax(logits / T)``
like the HF engine and the trainer (with ``top_p < 1`` or ``top_k > 0`` they are renormalised over the
kept tokens, which the trainer does not do: training refuses those settings). Engine numerics (bf16, other
kernels) differ from the trainer's; the ``correction`` group measures and corrects the mismatch.

With ``engine_kwargs.tensor_parallel_size`` >= 2 the ranks of a TP group share their leader's engine
(``rollout/tp_share.py``): the leader samples every rank's prompts in one engine call and pushes the weights;
the other ranks send their prompts, join the push's all-gathers and get their own samples back.
"""

from __future__ import annotations

import time
import zlib
from typing import Any

import torch

from longact_pl.models.types import resolve_dtype
from longact_pl.rollout.async_loop import AsyncSettings
from longact_pl.rollout.batch_builder import build_batch, check_sampling, eos_token_ids, left_pad
from longact_pl.rollout.tp_share import Call, Sample, ShareGroup, shared_generate, tp_share_group
from longact_pl.rollout.types import RolloutBatch
from longact_pl.rollout.vllm_engine import (
    SYNC_METHODS,
    Engine,
    engine_for,
    ranks_per_node,
    tensor_parallel_size,
)
from longact_pl.rollout.weight_push import PushStats, iter_weights


def prompt_seed(seed: int, prompt: list[int]) -> int:
    """Sampling seed of one prompt: depends on ``seed`` and the prompt's tokens, not on its batch position.

    So the samples of a prompt do not change with how prompts are split into batches or across ranks.
    """
    digest = zlib.crc32(torch.tensor(prompt, dtype=torch.int64).numpy().tobytes())
    return (int(seed) * 1_000_003 + digest) % (2**31 - 1)


class VLLMRollout:
    """Sample G completions per prompt with vLLM; same contract as ``HFRollout``.

    Args:
        group_size: G, completions per prompt (>= 2 for group-relative advantages).
        max_new_tokens: Generation budget per completion.
        temperature: Sampling temperature (> 0).
        top_p: Nucleus sampling mass in (0, 1].
        top_k: Top-k filter (0 = off).
        dtype: Engine weight dtype (``bfloat16``, ``float16`` or ``float32``).
        max_model_len: Longest prompt + completion (``None`` = the model's maximum).
        kv_cache_gib: KV-cache size in GiB (``None`` = vLLM's default: ``gpu_memory_utilization`` on GPU).
        gpu_memory_utilization: Share of GPU memory vLLM may use when ``kv_cache_gib`` is ``None``.
        enforce_eager: No CUDA graphs / torch.compile (fast start; required on CPU).
        weight_sync: ``bucket`` (shared-memory buckets, no file) or ``file`` (one safetensors file).
        bucket_mb: Bucket size in MiB for ``bucket`` (peak extra trainer memory of a push).
        sync_dir: Folder of the weight file for ``file`` (``None`` = the system temp dir).
        sleep_level: 0 = off; 1 = release the KV cache and offload weights between rollouts; 2 = release
            both (GPUs only; ignored elsewhere).
        engine_kwargs: Further ``vllm.LLM`` keyword arguments (e.g. ``tensor_parallel_size``).
        mode, max_staleness, round_tokens, placement, engine_device: Asynchronous rollouts (see
            :class:`~longact_pl.rollout.async_loop.AsyncSettings`; ``async`` runs vLLM in an engine process:
            ``placement=disaggregated``).

    Attributes:
        share_group: The ranks sharing this rank's engine (``rollout/tp_share.py``); ``None`` until the first
            push or rollout derives it from the TP size (tests set it).
    """

    # a separate engine samples from its own copy of the weights (the trainer corrects for the mismatch)
    external = True

    def __init__(
        self,
        group_size: int = 4,
        max_new_tokens: int = 40,
        temperature: float = 0.7,
        top_p: float = 1.0,
        top_k: int = 0,
        dtype: str = "bfloat16",
        max_model_len: int | None = None,
        kv_cache_gib: float | None = 1.0,
        gpu_memory_utilization: float = 0.3,
        enforce_eager: bool = True,
        weight_sync: str = "bucket",
        bucket_mb: float = 1024.0,
        sync_dir: str | None = None,
        sleep_level: int = 0,
        engine_kwargs: dict[str, Any] | None = None,
        mode: str = "sync",
        max_staleness: int = 1,
        round_tokens: int | None = None,
        placement: str = "colocated",
        engine_device: str | None = None,
    ) -> None:
        self.schedule = AsyncSettings(mode, max_staleness, round_tokens, placement, engine_device)
        check_sampling(group_size, max_new_tokens, temperature, top_p, top_k)
        resolve_dtype(dtype, "rollout.dtype")
        if weight_sync not in SYNC_METHODS:
            raise ValueError(f"rollout.weight_sync must be one of {list(SYNC_METHODS)}, got {weight_sync!r}")
        if bucket_mb <= 0:
            raise ValueError(f"rollout.bucket_mb must be > 0, got {bucket_mb}")
        if sleep_level not in (0, 1, 2):
            raise ValueError(f"rollout.sleep_level must be 0 (off), 1 or 2, got {sleep_level}")
        self.group_size, self.max_new_tokens = group_size, max_new_tokens
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.engine_args: dict[str, Any] = {
            "dtype": dtype,
            "max_model_len": max_model_len,
            "enforce_eager": enforce_eager,
            "gpu_memory_utilization": gpu_memory_utilization,
            **({"kv_cache_memory_bytes": int(kv_cache_gib * 2**30)} if kv_cache_gib else {}),
            **(engine_kwargs or {}),
        }
        self.weight_sync, self.bucket_bytes, self.sync_dir = weight_sync, int(bucket_mb * 2**20), sync_dir
        self.sleep_level = sleep_level
        self.last_sync_s: float | None = None
        self.last_push: PushStats | None = None
        self.syncs = 0
        self._stale = True
        self.share_group: ShareGroup | None = None

    # ------------------------------------------------------------------ weights
    def mark_stale(self) -> None:
        """The policy changed (an optimizer step): push its weights before the next rollout."""
        self._stale = True

    @torch.no_grad()
    def sync(self, policy: torch.nn.Module) -> float:
        """Push the policy's current weights into the engine now; returns the seconds it took.

        Under FSDP every rank must call it at the same point (gathering the shards is a collective); in a
        shared engine's TP group the leader pushes and the other ranks join the gathers.
        """
        group = self._group()
        _release_gpu_cache()
        group.gather(None)  # every rank's cache is back before the leader's engine may start
        if group.rank == 0:
            return self._sync(self._engine(policy), policy)
        return self._follow(policy)

    def _sync(self, engine: Engine, policy: torch.nn.Module) -> float:
        start = time.perf_counter()
        dtype = resolve_dtype(self.dtype, "rollout.dtype")
        self.last_push = engine.push(policy, dtype, self.weight_sync, self.bucket_bytes, self.sync_dir)
        engine.owner = id(self)
        self._stale = False
        self.syncs += 1
        self.last_sync_s = time.perf_counter() - start
        return self.last_sync_s

    def _follow(self, policy: torch.nn.Module) -> float:
        """A rank without an engine takes part in its leader's push: the FSDP all-gathers, nothing sent."""
        start = time.perf_counter()
        for _ in iter_weights(policy):
            pass
        self._stale = False
        self.syncs += 1
        self.last_sync_s = time.perf_counter() - start
        return self.last_sync_s

    def _engine(self, policy: torch.nn.Module) -> Engine:
        return engine_for(policy, self.engine_args, self.sleep_level)

    def _group(self) -> ShareGroup:
        if self.share_group is None:
            self.share_group = tp_share_group(tensor_parallel_size(self.engine_args), ranks_per_node())
        return self.share_group

    # --------------------------------------------------------------- sampling
    def _params(self, n: int, greedy: bool, seed: int, budget: int, eos_ids: list[int]):
        from vllm import SamplingParams

        return SamplingParams(
            n=n,
            temperature=0.0 if greedy else self.temperature,
            top_p=1.0 if greedy else self.top_p,
            top_k=0 if greedy else self.top_k,
            max_tokens=budget,
            seed=None if greedy else seed,
            logprobs=0,
            stop_token_ids=eos_ids,
            detokenize=False,
        )

    @torch.no_grad()
    def generate(
        self,
        policy: torch.nn.Module,
        tokenizer,
        prompts: list[list[int]],
        greedy: bool = False,
        seed: int = 0,
        max_new_tokens: int | None = None,
    ) -> RolloutBatch:
        """Sample completions (pushing the policy's weights first when they changed).

        Args:
            policy: The causal LM (its weights are pushed; it is not run here).
            tokenizer: Its tokenizer (pad and EOS ids, decoding).
            prompts: B prompt token id lists.
            greedy: Greedy decoding, one completion per prompt (validation).
            seed: Seeds the sampler; each prompt's seed also depends on its tokens (:func:`prompt_seed`).
            max_new_tokens: Override of the generation budget.

        Returns:
            A :class:`RolloutBatch` with ``B * G`` rows (``B`` when greedy).
        """
        eos_ids = eos_token_ids(policy, tokenizer)
        n = 1 if greedy else self.group_size
        budget = max_new_tokens or self.max_new_tokens
        calls = [
            Call(tuple(p), 0 if greedy else prompt_seed(seed, p), n, greedy, budget, tuple(eos_ids))
            for p in prompts
        ]
        per_call = shared_generate(self._group(), calls, _EngineSide(self, policy))
        return self.to_batch(prompts, [s for samples in per_call for s in samples], n, tokenizer, eos_ids)

    @staticmethod
    def to_batch(
        prompts: list[list[int]], samples: list[Sample], n: int, tokenizer, eos_ids: list[int]
    ) -> RolloutBatch:
        """The engine's samples (``n`` per prompt, in prompt order) as a :class:`RolloutBatch`."""
        ids, mask = left_pad(prompts, tokenizer.pad_token_id)  # [B, P]
        width = max(1, max(len(s.token_ids) for s in samples))
        completion = torch.full((len(samples), width), tokenizer.pad_token_id, dtype=torch.long)  # [N, C]
        behaviour = torch.zeros((len(samples), width), dtype=torch.float32)  # [N, C]
        lengths = torch.tensor([len(s.token_ids) for s in samples], dtype=torch.long)  # [N]
        for i, s in enumerate(samples):
            tokens = list(s.token_ids)
            completion[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            behaviour[i, : len(tokens)] = torch.tensor(s.logprobs, dtype=torch.float32)
        return build_batch(ids, mask, completion, behaviour, n, eos_ids, tokenizer, lengths)


def _release_gpu_cache() -> None:
    """Hand the trainer's cached allocator blocks back: an engine's TP workers may use this rank's GPU."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _EngineSide:
    """:class:`~longact_pl.rollout.tp_share.EngineSide` of a :class:`VLLMRollout` for one rollout."""

    def __init__(self, rollout: VLLMRollout, policy: torch.nn.Module) -> None:
        self.rollout, self.policy = rollout, policy
        self.engine: Engine | None = None

    def release(self) -> None:
        _release_gpu_cache()

    def open(self) -> bool:
        self.engine = self.rollout._engine(self.policy)
        self.engine.wake()
        return self.rollout._stale or self.engine.owner != id(self.rollout)

    def push(self, lead: bool) -> None:
        if lead:
            self.rollout._sync(self.engine, self.policy)
        else:
            self.rollout._follow(self.policy)

    def run(self, calls: list[Call]) -> list[list[Sample]]:
        params = [self.rollout._params(c.n, c.greedy, c.seed, c.max_tokens, list(c.stop_ids)) for c in calls]
        prompts = [{"prompt_token_ids": list(c.prompt)} for c in calls]
        outputs = self.engine.llm.generate(prompts, params, use_tqdm=False)
        return [[_sample(o) for o in sorted(out.outputs, key=lambda o: o.index)] for out in outputs]

    def close(self) -> None:
        if self.engine is not None:
            self.engine.sleep()


def _sample(output) -> Sample:
    """A vLLM ``CompletionOutput`` as a picklable :class:`~longact_pl.rollout.tp_share.Sample`."""
    tokens = tuple(output.token_ids)
    return Sample(tokens, tuple(float(lp[t].logprob) for lp, t in zip(output.logprobs, tokens)))
