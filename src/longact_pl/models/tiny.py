"""Tiny random models built in code (2 layers, hidden 64, GQA) for tests and quick demos.

They reuse the SmolLM2 tokenizer from the local cache, so nothing touches the network.
"""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from longact_pl.models.rope import with_rope_scaling
from longact_pl.models.smollm2 import smollm2_folder
from longact_pl.models.types import LoadedModel, finish


def _shared(
    tokenizer,
    hidden_size: int,
    num_layers: int,
    heads: int,
    kv_heads: int,
    max_len: int,
    vocab_size: int | None,
) -> dict:
    if vocab_size is not None and vocab_size < len(tokenizer):
        raise ValueError(
            f"model.vocab_size must be >= the tokenizer's {len(tokenizer)} tokens, got {vocab_size}"
        )
    return dict(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden_size // heads,
        max_position_embeddings=max_len,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )


def _build(model_cls, config_cls, seed: int, gradient_checkpointing: bool, cache_dir, extra: dict, **shape):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder(cache_dir))
    rope_scaling = shape.pop("rope_scaling", None)
    config = with_rope_scaling(config_cls(**_shared(tokenizer, **shape), **extra), rope_scaling)
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_cls(config)
    return finish(model, tokenizer, gradient_checkpointing)


def tiny_llama(
    hidden_size: int = 64,
    num_layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    max_len: int = 8192,
    vocab_size: int | None = None,
    seed: int = 0,
    gradient_checkpointing: bool = False,
    cache_dir: str | None = None,
    rope_scaling: dict | None = None,
) -> LoadedModel:
    """A random Llama-architecture model (GQA: ``heads`` query heads share ``kv_heads`` key heads).

    ``vocab_size`` above the tokenizer's size adds embedding rows no prompt uses (odd sizes for tests);
    ``None`` = the tokenizer's size.
    """
    return _build(
        LlamaForCausalLM, LlamaConfig, seed, gradient_checkpointing, cache_dir, {},
        hidden_size=hidden_size, num_layers=num_layers, heads=heads, kv_heads=kv_heads, max_len=max_len,
        rope_scaling=rope_scaling, vocab_size=vocab_size,
    )  # fmt: skip


def tiny_qwen3(
    hidden_size: int = 64,
    num_layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    max_len: int = 8192,
    vocab_size: int | None = None,
    seed: int = 0,
    gradient_checkpointing: bool = False,
    cache_dir: str | None = None,
    rope_scaling: dict | None = None,
) -> LoadedModel:
    """A random Qwen3-architecture model (q_norm/k_norm after the projections, GQA).

    ``vocab_size`` as in :func:`tiny_llama`.
    """
    return _build(
        Qwen3ForCausalLM, Qwen3Config, seed, gradient_checkpointing, cache_dir, {"layer_types": None},
        hidden_size=hidden_size, num_layers=num_layers, heads=heads, kv_heads=kv_heads, max_len=max_len,
        rope_scaling=rope_scaling, vocab_size=vocab_size,
    )  # fmt: skip
