"""Rollouts from a vLLM engine colocated with training (the only module that imports vLLM, lazily).

The engine starts on the first ``generate`` from a config-only folder with random (``dummy``) weights, and
the policy's current weights are pushed into it before the first rollout and after every optimizer step
(``mark_stale`` -> lazy push on the next ``generate``). One code path therefore covers a model loaded from
a folder, a model built in code and a run resumed from a checkpoint, and no second copy of the weights is
written to start the engine.

Weight push: the full (FSDP-gathered) ``state_dict`` is written to one safetensors file in ``sync_dir``
and the workers reload it in place (``rollout/vllm_worker.py``), then the prefix cache is dropped.

Behaviour log-probs are vLLM's ``processed_logprobs`` of the sampled tokens: ``log_softmax(logits / T)``
like the HF engine and the trainer (with ``top_p < 1`` or ``top_k > 0`` they are renormalised over the
kept tokens). Engine numerics (bf16, other kernels) differ from the trainer's; ``rollout.tis_cap`` turns
on truncated importance sampling in the learner to correct for it (the config interpolates it into
``module.tis_cap``; the engine only checks it).

Engines are shared within a process by configuration (``shutdown_engines()`` stops them): two rollout
objects for the same architecture reuse one engine, and each pushes its own weights before using it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from longact_pl.gather import full_state_dict
from longact_pl.models.types import resolve_dtype
from longact_pl.rollout.masks import check_sampling, completion_mask_after_eos, left_pad
from longact_pl.rollout.types import RolloutBatch

WORKER_EXTENSION = "longact_pl.rollout.vllm_worker.WeightSyncExtension"


@dataclass
class _Engine:
    """A running ``vllm.LLM`` and which rollout object's weights it currently holds."""

    llm: Any
    folder: tempfile.TemporaryDirectory
    owner: int | None = None


_ENGINES: dict[str, _Engine] = {}


def shutdown_engines() -> None:
    """Stop every engine started in this process (their worker processes exit)."""
    while _ENGINES:
        _, engine = _ENGINES.popitem()
        core = getattr(getattr(engine.llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        engine.folder.cleanup()


@contextlib.contextmanager
def _this_gpu_only() -> Iterator[None]:
    """Start the engine's processes on this rank's GPU: they inherit ``CUDA_VISIBLE_DEVICES``.

    With one training rank per GPU (DDP/FSDP), every rank starts its own engine; without this they would
    all land on GPU 0. A no-op on CPU and with a single visible GPU.
    """
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        yield
        return
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = old.split(",") if old else [str(i) for i in range(torch.cuda.device_count())]
    os.environ["CUDA_VISIBLE_DEVICES"] = ids[torch.cuda.current_device()]
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = old


def eos_token_ids(policy: torch.nn.Module, tokenizer) -> list[int]:
    """End-of-sequence ids: the generation config's (one or several), else the tokenizer's."""
    eos = getattr(getattr(policy, "generation_config", None), "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        return [int(e) for e in eos]
    return [int(eos if eos is not None else tokenizer.eos_token_id)]


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
        tis_cap: Truncated importance sampling cap for the rollout/train mismatch (``None`` = off). Only
            checked here, so a bad value fails before a model loads; the learner applies it (it reaches
            ``module.tis_cap`` through the config, see ``longact_pl.learner.Learner``).
        dtype: Engine weight dtype (``bfloat16``, ``float16`` or ``float32``).
        max_model_len: Longest prompt + completion (``None`` = the model's maximum).
        kv_cache_gib: KV-cache size in GiB (``None`` = vLLM's default: ``gpu_memory_utilization`` on GPU).
        gpu_memory_utilization: Share of GPU memory vLLM may use when ``kv_cache_gib`` is ``None``.
        enforce_eager: No CUDA graphs / torch.compile (fast start; required on CPU).
        sync_dir: Folder for the weight file of each push (``None`` = the system temp dir; ``/dev/shm``
            is fastest where it is large enough).
        engine_kwargs: Further ``vllm.LLM`` keyword arguments (e.g. ``tensor_parallel_size``).
    """

    def __init__(
        self,
        group_size: int = 4,
        max_new_tokens: int = 40,
        temperature: float = 0.7,
        top_p: float = 1.0,
        top_k: int = 0,
        tis_cap: float | None = None,
        dtype: str = "bfloat16",
        max_model_len: int | None = None,
        kv_cache_gib: float | None = 1.0,
        gpu_memory_utilization: float = 0.3,
        enforce_eager: bool = True,
        sync_dir: str | None = None,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        check_sampling(group_size, max_new_tokens, temperature, top_p)
        if tis_cap is not None and tis_cap <= 0:
            raise ValueError(f"rollout.tis_cap must be > 0 (or null = off), got {tis_cap}")
        resolve_dtype(dtype, "rollout.dtype")
        self.group_size, self.max_new_tokens = group_size, max_new_tokens
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.dtype = dtype
        self.engine_args: dict[str, Any] = {
            "dtype": dtype,
            "max_model_len": max_model_len,
            "enforce_eager": enforce_eager,
            "gpu_memory_utilization": gpu_memory_utilization,
            **({"kv_cache_memory_bytes": int(kv_cache_gib * 2**30)} if kv_cache_gib else {}),
            **(engine_kwargs or {}),
        }
        self.sync_dir = sync_dir
        self.last_sync_s: float | None = None
        self.syncs = 0
        self._stale = True

    # ------------------------------------------------------------------ weights
    def mark_stale(self) -> None:
        """The policy changed (an optimizer step): push its weights before the next rollout."""
        self._stale = True

    @torch.no_grad()
    def sync(self, policy: torch.nn.Module) -> float:
        """Push the policy's current weights into the engine now; returns the seconds it took.

        Under FSDP every rank must call it at the same point (gathering the shards is a collective).
        """
        engine = self._engine(policy)
        start = time.perf_counter()
        state = full_state_dict(policy, dtype=resolve_dtype(self.dtype, "rollout.dtype"))
        unique: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        for name, tensor in state.items():  # tied weights once (vLLM re-ties them on load)
            if id(tensor) not in seen:
                seen.add(id(tensor))
                unique[name] = tensor
        with tempfile.TemporaryDirectory(dir=self.sync_dir, prefix="longact-sync-") as tmp:
            path = str(Path(tmp) / "weights.safetensors")
            save_file(unique, path)
            engine.llm.collective_rpc("load_weights_file", args=(path,))
        engine.llm.reset_prefix_cache()
        engine.owner = id(self)
        self._stale = False
        self.syncs += 1
        self.last_sync_s = time.perf_counter() - start
        return self.last_sync_s

    def _engine(self, policy: torch.nn.Module) -> _Engine:
        config_json = policy.config.to_json_string(use_diff=False)
        key = hashlib.sha256((config_json + repr(sorted(self.engine_args.items()))).encode()).hexdigest()
        if key not in _ENGINES:
            _ENGINES[key] = self._start(policy)
        return _ENGINES[key]

    def _start(self, policy: torch.nn.Module) -> _Engine:
        from vllm import LLM  # heavy import, only when a vLLM rollout actually runs

        folder = tempfile.TemporaryDirectory(prefix="longact-vllm-")
        policy.config.save_pretrained(folder.name)  # config only: weights arrive by the first push
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        with _this_gpu_only():
            llm = LLM(
                model=folder.name,
                load_format="dummy",
                skip_tokenizer_init=True,
                logprobs_mode="processed_logprobs",
                worker_extension_cls=WORKER_EXTENSION,
                **{k: v for k, v in self.engine_args.items() if v is not None},
            )
        return _Engine(llm=llm, folder=folder)

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
        engine = self._engine(policy)
        if self._stale or engine.owner != id(self):
            self.sync(policy)
        eos_ids = eos_token_ids(policy, tokenizer)
        n = 1 if greedy else self.group_size
        budget = max_new_tokens or self.max_new_tokens
        params = [self._params(n, greedy, prompt_seed(seed, p), budget, eos_ids) for p in prompts]
        outputs = engine.llm.generate(
            [{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False
        )
        samples = [o for out in outputs for o in sorted(out.outputs, key=lambda o: o.index)]
        return self._batch(prompts, samples, n, tokenizer, eos_ids)

    @staticmethod
    def _batch(
        prompts: list[list[int]], samples: list, n: int, tokenizer, eos_ids: list[int]
    ) -> RolloutBatch:
        """Lay vLLM's outputs out as ``[left-padded prompt | right-padded completion]``."""
        pad = tokenizer.pad_token_id
        ids, mask = left_pad(prompts, pad)  # [B, P]
        width = max(1, max(len(s.token_ids) for s in samples))
        completion = torch.full((len(samples), width), pad, dtype=torch.long)  # [N, C]
        behaviour = torch.zeros((len(samples), width), dtype=torch.float32)  # [N, C]
        lengths = torch.zeros(len(samples), dtype=torch.long)  # [N]
        for i, s in enumerate(samples):
            tokens = list(s.token_ids)
            lengths[i] = len(tokens)
            completion[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            behaviour[i, : len(tokens)] = torch.tensor(
                [lp[t].logprob for lp, t in zip(s.logprobs, tokens)], dtype=torch.float32
            )
        in_range = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)  # [N, C]
        comp_mask = completion_mask_after_eos(completion, eos_ids) * in_range.long()  # [N, C]
        completion = torch.where(comp_mask.bool(), completion, pad)  # [N, C]
        return RolloutBatch(
            input_ids=torch.cat([ids.repeat_interleave(n, dim=0), completion], dim=1),  # [N, P + C]
            attention_mask=torch.cat([mask.repeat_interleave(n, dim=0), comp_mask], dim=1),  # [N, P + C]
            completion_mask=comp_mask,
            behaviour_logp=behaviour * comp_mask,  # [N, C]
            completions=tokenizer.batch_decode(completion, skip_special_tokens=True),
            prompt_width=ids.shape[1],
            group_size=n,
        )
