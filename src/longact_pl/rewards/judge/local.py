"""A local vLLM engine as the judge back end: the project's engine module (``rollout/vllm_engine.py``)."""

from __future__ import annotations

from typing import Any

import torch

from longact_pl.data.prompting import template_ids
from longact_pl.models.types import LoadedModel, resolve_dtype
from longact_pl.rewards.judge.types import Messages


class VllmJudgeBackend:
    """Greedy replies from a vLLM engine holding the judge model's weights, all requests in one batch.

    The engine is started (and the weights pushed) on the first call, by the same code that serves rollouts
    (:func:`~longact_pl.rollout.vllm_engine.engine_for`): engines are shared by configuration, so a judge of
    the policy's architecture with the rollout's engine settings reuses the rollout engine, pushing its own
    weights before judging (the rollout pushes the policy's back before its next generation). A local engine
    has no per-request time limit; ``timeout_s`` of the HTTP back end has no counterpart here.

    Args:
        model: The judge model and its tokenizer (e.g. ``longact_pl.models.smollm2.load_smollm2``).
        max_tokens: Reply budget.
        dtype: Engine weight dtype.
        max_model_len: Longest request + reply (``None``: the model's maximum).
        kv_cache_gib: KV-cache size in GiB.
        enforce_eager: No CUDA graphs (required on CPU).
        gpu_memory_utilization: Share of GPU memory when ``kv_cache_gib`` is ``None``.
    """

    def __init__(
        self,
        model: LoadedModel,
        max_tokens: int = 256,
        dtype: str = "bfloat16",
        max_model_len: int | None = 4096,
        kv_cache_gib: float | None = 1.0,
        enforce_eager: bool = True,
        gpu_memory_utilization: float = 0.2,
    ) -> None:
        if max_tokens < 1:
            raise ValueError(f"judge.backend.max_tokens must be >= 1, got {max_tokens}")
        resolve_dtype(dtype, "judge.backend.dtype")
        self.model, self.tokenizer = model.model.eval(), model.tokenizer
        self.max_tokens, self.dtype = max_tokens, dtype
        self.engine_args: dict[str, Any] = {
            "dtype": dtype,
            "max_model_len": max_model_len,
            "enforce_eager": enforce_eager,
            "gpu_memory_utilization": gpu_memory_utilization,
            **({"kv_cache_memory_bytes": int(kv_cache_gib * 2**30)} if kv_cache_gib else {}),
        }

    @torch.no_grad()
    def complete(self, requests: list[Messages]) -> list[str | BaseException]:
        """Greedy replies to every request in one engine call (an engine error fails all of them)."""
        from longact_pl.rollout.batch_builder import eos_token_ids
        from longact_pl.rollout.vllm_engine import engine_for, generate_greedy

        if not requests:
            return []
        try:
            engine = engine_for(self.model, self.engine_args)
            engine.wake()
            if engine.owner != id(self):
                engine.push(self.model, resolve_dtype(self.dtype), "bucket", 64 * 2**20, None)
                engine.owner = id(self)
            prompts = [template_ids(self.tokenizer, m) for m in requests]
            stop = eos_token_ids(self.model, self.tokenizer)
            replies = generate_greedy(engine, prompts, self.max_tokens, stop)
            engine.sleep()
        except Exception as err:  # noqa: BLE001 - every request of the batch failed with it (retried)
            return [err] * len(requests)
        return [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in replies]
