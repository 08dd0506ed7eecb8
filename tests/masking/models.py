"""Tiny random models of several attention layouts, built in code (vocab 300, hidden 64, 4 query heads)."""

from __future__ import annotations

import torch
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    FalconConfig,
    FalconForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from longact_pl.models.tiny import tiny_llama
from longact_pl.models.types import LoadedModel

VOCAB = 300
COMMON = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
)


def _seeded(cls, config, seed: int = 0):
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return cls(config)


def llama(seed: int = 0, **kw) -> LlamaForCausalLM:
    """Llama, GQA 4 query / 2 key-value heads, head_dim 16, rotate-half RoPE."""
    return _seeded(LlamaForCausalLM, LlamaConfig(**COMMON, num_key_value_heads=2, **kw), seed)


def qwen3(seed: int = 0) -> Qwen3ForCausalLM:
    """Qwen3 (q_norm/k_norm), GQA 4/2, head_dim 16."""
    config = Qwen3Config(**COMMON, num_key_value_heads=2, head_dim=16, layer_types=None)
    return _seeded(Qwen3ForCausalLM, config, seed)


def phi3(seed: int = 0, partial_rotary_factor: float = 1.0) -> Phi3ForCausalLM:
    """Phi-3: contiguous fused ``qkv_proj`` (rows Q 64 | K 32 | V 32), GQA 4/2."""
    config = Phi3Config(
        **COMMON, num_key_value_heads=2, partial_rotary_factor=partial_rotary_factor, pad_token_id=0
    )
    return _seeded(Phi3ForCausalLM, config, seed)


def neox(seed: int = 0) -> GPTNeoXForCausalLM:
    """GPT-NeoX: per-head interleaved fused ``query_key_value`` (4 heads x [q 16 | k 16 | v 16]); RoPE on
    the first quarter of each head (``partial_rotary_factor`` 0.25)."""
    return _seeded(GPTNeoXForCausalLM, GPTNeoXConfig(**COMMON), seed)


def cohere(seed: int = 0) -> CohereForCausalLM:
    """Cohere: interleaved RoPE (channels 2i and 2i+1 rotate together)."""
    return _seeded(CohereForCausalLM, CohereConfig(**COMMON, num_key_value_heads=2, pad_token_id=0), seed)


def falcon(seed: int = 0) -> FalconForCausalLM:
    """Falcon: a fused ``query_key_value`` whose layout longact_pl does not know."""
    config = FalconConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    return _seeded(FalconForCausalLM, config, seed)


def opt(seed: int = 0) -> OPTForCausalLM:
    """OPT: q_proj/k_proj with learned positions, no RoPE."""
    config = OPTConfig(
        vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
        word_embed_proj_dim=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return _seeded(OPTForCausalLM, config, seed)


def tiny_opt(seed: int = 0, **_: object) -> LoadedModel:
    """OPT with the SmolLM2 tokenizer: a ``model._target_`` for ``train.py`` (shape args ignored)."""
    tokenizer = tiny_llama(seed=seed).tokenizer
    config = OPTConfig(
        vocab_size=len(tokenizer), hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
        word_embed_proj_dim=64, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    return LoadedModel(model=_seeded(OPTForCausalLM, config, seed), tokenizer=tokenizer)
