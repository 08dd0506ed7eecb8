"""Decoding with one shared copy of each prompt's key/values (a cache + attention pair for ``generate``).

``generate(num_return_sequences=G)`` keeps G copies of every prompt's key/values and, on CPU in bf16, runs
each single-token decode step through SDPA's flash kernel, which is ~10x slower than a plain matmul at query
length 1. Here:

* :class:`SharedPrefixCache` holds the prompt's key/values once per prompt (``[B, h, P, d]``) and only the
  generated tokens per row (``[B * G, h, t, d]``);
* :func:`shared_prefix_attention` (registered as ``attn_implementation="longact_shared_prefix"``) computes
  one decode step as two matmuls: the G rows of a group query the shared prompt keys together, then their own
  generated keys; one softmax spans both. Queries longer than a few tokens fall back to SDPA on the expanded
  key/values (same numbers, more memory).

:func:`shared_prefix_decoding` switches a model to this attention for the duration of a ``generate`` call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from longact_pl.ops.positions import position_ids_from_mask
from longact_pl.ops.shared_prefix import full_attention_only
from longact_pl.rollout.attention_switch import attention_switched

ATTN_NAME = "longact_shared_prefix"
MAX_MATMUL_QUERY = 16  # longer queries use SDPA on expanded key/values
_ACTIVE: ContextVar[SharedPrefixCache | None] = ContextVar("longact_shared_prefix_cache", default=None)


class _SharedPrefixLayer(DynamicLayer):
    """Prompt key/values ``[B, h, P, d]`` shared by G rows each; ``keys``/``values``: the rows' tokens."""

    def __init__(self, prefix_keys: torch.Tensor, prefix_values: torch.Tensor, group: int) -> None:
        super().__init__()
        self.prefix_keys, self.prefix_values, self.group = prefix_keys, prefix_values, group

    def get_seq_length(self) -> int:
        own = self.keys.shape[-2] if self.is_initialized and self.keys is not None else 0
        return self.prefix_keys.shape[-2] + own

    def expanded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt key/values repeated to one copy per row, ``[B * G, h, P, d]``."""
        return (
            self.prefix_keys.repeat_interleave(self.group, dim=0),
            self.prefix_values.repeat_interleave(self.group, dim=0),
        )

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat rows: more rows per prompt (the prompt copy stays single)."""
        self.group *= repeats
        super().batch_repeat_interleave(repeats)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("SharedPrefixCache does not support beam search")


class SharedPrefixCache(DynamicCache):
    """A ``DynamicCache`` whose prompt part is stored once per prompt (see the module docstring).

    Args:
        prompt_cache: A filled cache of B rows (one per prompt), e.g. from a prefill forward.
        group: G, rows per prompt in the generation batch.
    """

    def __init__(self, prompt_cache: Cache, group: int) -> None:
        Cache.__init__(
            self,
            layers=[_SharedPrefixLayer(layer.keys, layer.values, group) for layer in prompt_cache.layers],
        )


def _grouped(x: torch.Tensor, batch: int, group: int) -> torch.Tensor:
    """``[B * G, h, r, q, d] -> [B, h, G * r * q, d]``: a group's queries side by side."""
    _, h, r, q, d = x.shape
    return x.reshape(batch, group, h, r, q, d).transpose(1, 2).reshape(batch, h, group * r * q, d)


def shared_prefix_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention over a shared prompt plus each row's own tokens (HF attention-interface signature).

    Args:
        module: The attention module (``layer_idx``, ``num_key_value_groups``).
        query: ``[N, H, q, d]`` with ``N = B * G``.
        key: ``[N, h, t, d]`` the rows' own key states (as returned by :class:`SharedPrefixCache`).
        value: ``[N, h, t, d]``.
        attention_mask: ``[N, 1, q, P + t]`` bool (True = attend) or ``None``.
        dropout: Must be 0 (inference only).
        scaling: Softmax scale (default ``d ** -0.5``).
        **kwargs: Passed to SDPA on the fallback path.

    Returns:
        ``(attn_output [N, q, H, d], None)``.
    """
    cache = _ACTIVE.get()
    if cache is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    layer = cache.layers[module.layer_idx]
    rows, heads, q_len, dim = query.shape
    if q_len > MAX_MATMUL_QUERY or dropout > 0:
        pk, pv = layer.expanded()  # [N, h, P, d]
        full_k, full_v = torch.cat([pk, key], dim=-2), torch.cat([pv, value], dim=-2)  # [N, h, P + t, d]
        return sdpa_attention_forward(
            module, query, full_k, full_v, attention_mask, dropout, scaling, **kwargs
        )
    pk, pv, group = layer.prefix_keys, layer.prefix_values, layer.group  # [B, h, P, d]
    batch, kv_heads, width = pk.shape[0], pk.shape[1], pk.shape[2]
    rep = heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    q5 = query.reshape(rows, kv_heads, rep, q_len, dim)  # [N, h, r, q, d]: head j reads kv head j // r
    s_pre = _grouped(q5, batch, group) @ pk.transpose(-1, -2)  # [B, h, G * r * q, P]
    s_pre = s_pre.reshape(batch, kv_heads, group, rep * q_len, width).transpose(1, 2)  # [B, G, h, r * q, P]
    s_pre = s_pre.reshape(rows, kv_heads, rep * q_len, width)  # [N, h, r * q, P]
    s_own = q5.reshape(rows, kv_heads, rep * q_len, dim) @ key.transpose(-1, -2)  # [N, h, r * q, t]
    scores = torch.cat([s_pre, s_own], dim=-1).float().mul_(scale)  # [N, h, r * q, P + t]
    if attention_mask is not None:
        allowed = attention_mask.bool().view(rows, 1, 1, q_len, -1)  # [N, 1, 1, q, P + t]
        allowed = allowed.expand(rows, kv_heads, rep, q_len, -1).reshape(rows, kv_heads, rep * q_len, -1)
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(value.dtype)  # [N, h, r * q, P + t]
    p_pre = probs[..., :width].reshape(rows, kv_heads, rep, q_len, width)  # [N, h, r, q, P]
    out = _grouped(p_pre, batch, group) @ pv  # [B, h, G * r * q, d]
    out = out.reshape(batch, kv_heads, group, rep * q_len, dim).transpose(1, 2)  # [B, G, h, r * q, d]
    out = out.reshape(rows, kv_heads, rep * q_len, dim) + probs[..., width:] @ value  # [N, h, r * q, d]
    out = out.reshape(rows, heads, q_len, dim).transpose(1, 2).contiguous()  # [N, q, H, d]
    return out, None


AttentionInterface.register(ATTN_NAME, shared_prefix_attention)
AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


@contextmanager
def shared_prefix_decoding(model: nn.Module, cache: SharedPrefixCache) -> Iterator[None]:
    """Run ``model`` with :func:`shared_prefix_attention` over ``cache`` inside the block.

    Raises:
        NotImplementedError: For models with sliding-window or non-attention layers.
    """
    if not full_attention_only(model):
        raise NotImplementedError("shared-prefix decoding supports full-attention decoders only")
    with attention_switched(model, ATTN_NAME, _ACTIVE, cache):
        yield


def prefill(policy: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> DynamicCache | None:
    """Cache of all but the last prompt token, one row per prompt (for ``generate`` to continue from).

    Args:
        policy: The causal LM (in eval mode).
        ids: ``[B, P]`` left-padded prompts.
        mask: ``[B, P]`` their attention mask.

    Returns:
        A cache of B rows and ``P - 1`` positions, or ``None`` when ``P == 1``.
    """
    if ids.shape[1] < 2:
        return None
    cache = DynamicCache(config=policy.config)
    head, head_mask = ids[:, :-1], mask[:, :-1]  # [B, P - 1]
    policy(
        input_ids=head,
        attention_mask=head_mask,
        position_ids=position_ids_from_mask(head_mask),  # [B, P - 1]
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return cache
