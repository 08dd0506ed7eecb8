"""The packed pass's FlexAttention ``BlockMask``, built from the layout at block granularity.

The packed row's keys are every span's prompt (``sum(P_s)`` keys, span after span) followed by the packed
completion tokens (``T``); a token attends to its own span's prompt and, causally, to its own row
(:class:`longact_pl.ops.packed.PackedCompletions`). Torch's ``create_block_mask`` evaluates the mask function
on every ``(query, key)`` pair (``T x (sum(P_s) + T)``, gigabytes at 32k-token prompts) unless compiled; here
the tiles are classified from the layout alone, in ``O(T + sum(P_s) + tiles)``:

* **prompt keys**: a tile's allowed prompt pairs are ``sum_s n_q[tile, s] * n_k[s, tile]`` (tokens of span
  ``s`` among its queries times span ``s``'s prompt keys among its keys): one small matrix product;
* **own keys**: tokens are packed row after row, so a query tile and a key tile share a row iff their row
  ranges overlap, and then some pair is causal iff the key tile starts before the query tile ends; every
  pair is allowed iff both lie in one row and the key tile ends before the query tile starts.

A tile with some allowed pair is computed (``partial``: the mask function is applied; ``full``: every pair
allowed, applied without it); the rest are skipped. Ragged last tiles are never ``full`` (as in torch's own
builder). :func:`block_work` counts the query-key pairs a kernel computes at this tiling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch.nn.attention.flex_attention import BlockMask

if TYPE_CHECKING:
    from longact_pl.ops.packed import PackedCompletions

BLOCK = 128  # FlexAttention's default tile (queries x keys)


def _blocks(n: int, block: int) -> int:
    return -(-n // block)


def padded_mask_mod(layout: PackedCompletions, block: int = BLOCK) -> Callable:
    """The layout's mask function with its index tensors padded to whole tiles (sentinels never match).

    Kernels evaluate the mask function on a ragged last tile's out-of-range indices too.
    """
    spans = len(layout.prompt_lengths)
    device = layout.owner.device
    prompt_span = torch.repeat_interleave(
        torch.arange(spans, device=device), layout.prompt_lengths
    )  # [sum P]
    t, k = layout.num_tokens, layout.num_prompt_keys + layout.num_tokens
    q_pad, k_pad = _blocks(t, block) * block - t, _blocks(k, block) * block - k

    def pad(x: torch.Tensor, n: int, value: int) -> torch.Tensor:
        return torch.cat([x, x.new_full((n,), value)])

    key_span = pad(torch.cat([prompt_span, layout.owner]), k_pad, -1)  # [K']
    key_seq = pad(torch.cat([torch.full_like(prompt_span, -1), layout.seq]), k_pad, -2)  # [K']: -1 prompt
    key_col = pad(torch.cat([torch.zeros_like(prompt_span), layout.col]), k_pad, 0)  # [K']
    owner = pad(layout.owner, q_pad, -2)  # [T']
    seq = pad(layout.seq, q_pad, -3)  # [T']
    col = pad(layout.col, q_pad, -1)  # [T']

    def packed_mask(batch_idx, head_idx, q_idx, kv_idx):
        own_prompt = (key_seq[kv_idx] == -1) & (key_span[kv_idx] == owner[q_idx])
        own_row = (key_seq[kv_idx] == seq[q_idx]) & (key_col[kv_idx] <= col[q_idx])
        return own_prompt | own_row

    return packed_mask


def block_layout(layout: PackedCompletions, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Which tiles hold an allowed pair and which hold only allowed pairs.

    Returns:
        ``(any [nQ, nK] bool, full [nQ, nK] bool)`` over ``block x block`` tiles of the ``[T, sum(P_s) + T]``
        mask (``full`` implies ``any``).
    """
    device = layout.owner.device
    t, p = layout.num_tokens, layout.num_prompt_keys
    k, spans = p + t, len(layout.prompt_lengths)
    nq, nk = _blocks(t, block), _blocks(k, block)
    q_start = torch.arange(nq, device=device) * block  # [nQ]
    q_end = (q_start + block).clamp(max=t)  # [nQ] exclusive
    k_start = torch.arange(nk, device=device) * block  # [nK]
    k_end = (k_start + block).clamp(max=k)  # [nK] exclusive
    # prompt keys: allowed pairs per tile = queries of span s x prompt keys of span s
    prompt_span = torch.repeat_interleave(torch.arange(spans, device=device), layout.prompt_lengths)  # [p]
    n_q = torch.zeros(nq, spans, device=device, dtype=torch.float64)
    n_q.index_put_((torch.arange(t, device=device) // block, layout.owner), n_q.new_ones(t), accumulate=True)
    n_k = torch.zeros(spans, nk, device=device, dtype=torch.float64)
    n_k.index_put_((prompt_span, torch.arange(p, device=device) // block), n_k.new_ones(p), accumulate=True)
    prompt_pairs = n_q @ n_k  # [nQ, nK]
    prompt_keys = n_k.sum(0)  # [nK]
    prompt_any = prompt_pairs > 0  # [nQ, nK]
    prompt_all = prompt_pairs == (q_end - q_start)[:, None] * prompt_keys[None]  # [nQ, nK] (vacuous: none)
    # own keys: the tile's part at or past p, as indices into the packed tokens
    own_start = (k_start.clamp(min=p) - p).clamp(max=max(t - 1, 0))  # [nK]
    own_end = k_end - p  # [nK] exclusive; <= 0: no own keys
    has_own = own_end > 0  # [nK]
    last = (own_end - 1).clamp(min=0)  # [nK]
    if t:
        rq0, rq1 = layout.seq[q_start], layout.seq[q_end - 1]  # [nQ]
        rk0, rk1 = layout.seq[own_start], layout.seq[last]  # [nK]
    else:
        rq0 = rq1 = q_start
        rk0 = rk1 = k_start
    share_row = torch.maximum(rq0[:, None], rk0[None]) <= torch.minimum(rq1[:, None], rk1[None])  # [nQ, nK]
    own_any = has_own[None] & share_row & (own_start[None] <= (q_end - 1)[:, None])  # [nQ, nK]
    one_row = (rq0 == rq1)[:, None] & (rk0 == rk1)[None] & (rq0[:, None] == rk0[None])  # [nQ, nK]
    own_all = ~has_own[None] | (one_row & (last[None] <= q_start[:, None]))  # [nQ, nK]
    whole = ((q_end - q_start) == block)[:, None] & ((k_end - k_start) == block)[None]  # [nQ, nK]
    any_ = prompt_any | own_any
    return any_, any_ & whole & prompt_all & own_all


def _ordered(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[nQ, nK]`` bool tiles -> (count ``[1, 1, nQ]``, indices ``[1, 1, nQ, nK]``, set tiles first)."""
    count = dense.sum(-1).to(torch.int32)  # [nQ]
    order = torch.argsort((~dense).to(torch.int8), dim=-1, stable=True).to(torch.int32)  # [nQ, nK]
    return count[None, None], order[None, None]


def packed_block_mask(layout: PackedCompletions, block: int = BLOCK) -> BlockMask:
    """FlexAttention ``BlockMask`` of the packed mask (batch 1, shared by every head)."""
    any_, full = block_layout(layout, block)
    partial_num, partial_idx = _ordered(any_ & ~full)
    full_num, full_idx = _ordered(full)
    return BlockMask.from_kv_blocks(
        partial_num, partial_idx, full_num, full_idx, BLOCK_SIZE=block,
        mask_mod=padded_mask_mod(layout, block),
        seq_lengths=(layout.num_tokens, layout.num_prompt_keys + layout.num_tokens),
    )  # fmt: skip


def mark_tiles_dynamic(mask: BlockMask) -> BlockMask:
    """Mark the tile-count dimensions of ``mask``'s tensors dynamic for ``torch.compile`` (returns ``mask``).

    Every micro-batch packs another length, so another number of tiles; unmarked, the compiled
    FlexAttention specialises on the tile counts and recompiles for each micro-batch (then, past the
    recompile limit, falls back to the unfused kernel that materialises the scores).
    """
    for side in ("kv", "q"):
        for name in (
            f"{side}_num_blocks",
            f"{side}_indices",
            f"full_{side}_num_blocks",
            f"full_{side}_indices",
        ):
            tensor = getattr(mask, name)
            if tensor is not None:
                for dim in range(2, tensor.dim()):  # [B, H, tiles] and [B, H, tiles, tiles]
                    torch._dynamo.maybe_mark_dynamic(tensor, dim)
    return mask


def real_pairs(layout: PackedCompletions) -> int:
    """Allowed query-key pairs: each token sees its prompt and its row up to itself."""
    return int((layout.prompt_lengths[layout.owner] + layout.col + 1).sum())


def block_work(layout: PackedCompletions, block: int = BLOCK) -> int:
    """Query-key pairs a tiled kernel computes: ``block * block`` per tile that holds an allowed pair."""
    any_, _ = block_layout(layout, block)
    return int(any_.sum()) * block * block
