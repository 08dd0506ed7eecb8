"""The shapes the plan is held to on the CPU (``tests/memory/test_measured.py``, ``bench_memory.py``).

From a tiny Qwen3 to SmolLM2-135M at 4k tokens, random-initialised from their configs (nothing loaded):
bf16-mixed and fp32, with and without activation checkpointing, LM-head, activation and K/V-hold heavy;
the measured cases run the default (layer-interleaved) shared-prompt pass, ``HOLD_CASES`` both orders.
"""

from __future__ import annotations

from longact_pl.memory.shapes import SMOLLM2_135M

_BASE = dict(vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=16384)
TINY_QWEN3 = dict(_BASE, model_type="qwen3", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16)  # fmt: skip
SMALL_LLAMA = dict(_BASE, model_type="llama", hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=64)  # fmt: skip
SMALL_QWEN3 = dict(SMALL_LLAMA, model_type="qwen3")
SMOLLM2 = dict(SMOLLM2_135M, max_position_embeddings=16384)
# many wide K/V heads, a small vocabulary: the two-pass order's prompt K/V + gradient hold dominates its peak
HOLD_QWEN3 = dict(_BASE, vocab_size=8192, model_type="qwen3", hidden_size=256, intermediate_size=512,
                  num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=4, head_dim=64)  # fmt: skip

# name, config, prompt P, group G, completion C, precision, checkpointing, LM-head chunk
CASES = [
    dict(name="tiny_qwen3_1k_bf16", config=TINY_QWEN3, prompt=512, group=4, completion=64,
         precision="bf16-mixed", ckpt=False, chunk=1024),
    dict(name="small_llama_2k_fp32", config=SMALL_LLAMA, prompt=2048, group=4, completion=128,
         precision="32-true", ckpt=False, chunk=1024),
    dict(name="small_qwen3_5k_bf16_ckpt", config=SMALL_QWEN3, prompt=4096, group=4, completion=256,
         precision="bf16-mixed", ckpt=True, chunk=128),
    dict(name="smollm2_4k_bf16_ckpt", config=SMOLLM2, prompt=3072, group=4, completion=256,
         precision="bf16-mixed", ckpt=True, chunk=256),
]  # fmt: skip

# the interleaved shared-prompt pass against the two-pass order where the latter's hold is large
# (``scripts/bench/bench_interleave.py``; docs/memory.md, issue 24 point 5)
HOLD_CASES = [
    dict(name=f"hold_qwen3_8k_bf16_ckpt_{arm}", config=HOLD_QWEN3, prompt=8192, group=4, completion=256,
         precision="bf16-mixed", ckpt=True, chunk=256, interleave=arm == "interleaved")
    for arm in ("interleaved", "two_pass")
]  # fmt: skip
