"""Bytes a decoder layer keeps for its backward, per token, as Hugging Face Llama / Qwen3 run under autograd.

Counted from the tensors autograd saves in one ``LlamaDecoderLayer`` / ``Qwen3DecoderLayer`` (SDPA, no
mask; ``tests/memory/test_activations.py`` counts them with ``saved_tensors_hooks`` and compares). With
``q = heads x head_dim``, ``k = kv_heads x head_dim``, H the hidden width and I the MLP width, per token:

* ``32-true``: float32 everywhere: the residual stream and both RMSNorms (6 H and their two rsqrt), the
  projections' inputs and outputs (2 q + 2 k), the gated MLP (4 I), SDPA's log-sum-exp (heads).
* ``bf16-mixed``: the residual stream stays float32 (embeddings are not autocast, so ``fp32 + bf16`` adds
  give float32): 4 H float32 and the log-sum-exp; autocast's bf16 copies of the projections' inputs (5 H),
  of q, k, v after RoPE (2 q + 2 k) and the MLP (4 I).
* Qwen3's q/k RMSNorms add float32 copies (and bf16 ones under autocast) of q and k and one rsqrt per head.

Keys after RoPE are float32 even under autocast (``q * cos`` with float32 ``cos``), values bf16: that is the
dtype the shared prompt's keys/values are held in (:func:`kv_bytes_per_token`).
"""

from __future__ import annotations

from longact_pl.memory.shapes import ModelShape


def mixed(precision: str) -> bool:
    """Whether Lightning's ``precision`` computes in bf16/fp16 under autocast with float32 weights."""
    return str(precision).endswith("-mixed")


def compute_bytes(precision: str, param_bytes: int) -> int:
    """Bytes of one compute element: 2 under ``*-mixed`` or 16-bit weights, else 4."""
    return 2 if mixed(precision) or param_bytes == 2 else 4


def layer_bytes_per_token(shape: ModelShape, precision: str, param_bytes: int = 4) -> int:
    """Bytes one decoder layer saves for backward per token (no checkpointing, no attention mask)."""
    h, q, k, i, heads = shape.hidden, shape.q_width, shape.kv_width, shape.intermediate, shape.heads
    if compute_bytes(precision, param_bytes) == 2:
        total = 4 * (2 + heads + 4 * h) + 2 * (2 * k + 5 * h + 2 * q + 4 * i)
        if shape.qk_norm:
            total += 4 * (shape.kv_heads + heads + k + q) + 2 * (k + q)
        return total
    total = 4 * (2 + heads + 6 * h + 2 * k + 2 * q + 4 * i)
    if shape.qk_norm:
        total += 4 * (shape.kv_heads + heads + 2 * k + 2 * q)
    return total


def kv_bytes_per_token(shape: ModelShape, precision: str, param_bytes: int = 4) -> int:
    """Bytes of one token's keys and values in one layer as the model produces them.

    Keys come out of RoPE in the residual stream's dtype (float32 with float32 weights), values out of
    ``v_proj`` in the compute dtype.
    """
    key = 4 if param_bytes == 4 else 2
    return shape.kv_width * (key + compute_bytes(precision, param_bytes))


def backward_transient_per_token(shape: ModelShape) -> int:
    """Gradient buffers alive while one layer runs backward, per token (float32 grads of hidden and MLP)."""
    return 4 * (2 * shape.hidden + 2 * shape.intermediate)
