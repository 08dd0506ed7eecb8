"""Completion log-probs with every sequence split over the N ranks of a sequence-parallel group.

Same contract and numbers as the single-process paths (per row:
:func:`longact_pl.ops.chunked.chunked_completion_logprobs`; the prompt once per group:
:func:`longact_pl.ops.shared_prefix.grouped_completion_logprobs`); every rank of the group passes the same
rows and gets the same ``[n, C]`` log-probs back.

* Sharding: a sequence of ``L`` tokens is padded at its end to ``N * S`` (``S = ceil(L / N)``) and rank ``r``
  runs positions ``[r * S, (r + 1) * S)`` with their true ``position_ids`` (so RoPE is that of the whole
  sequence). Padding at the end is never attended by a real token (causal), so the prompt pass needs no mask.
* Attention: :mod:`longact_pl.ops.sequence_parallel.attention` (all-to-all to head-split, the model's own
  attention function over every position, all-to-all back) with the full-sequence mask built here by
  transformers' mask function for the model's implementation.
* Shared prompt: the prompt pass records each layer's key/values after the all-to-all, i.e. in the head-split
  layout ``[1, h_kv / N, P, d]`` the completion pass attends to; the completion pass (the group's G rows,
  split along the completion) prepends them to its own head-split key/values.
* LM head: each rank applies it to the completion-predicting positions it holds only (a chunked head, as
  :func:`longact_pl.ops.chunked.head_logprobs`), scatters the results into ``[n, C]`` and the group sums them
  (:func:`~longact_pl.ops.sequence_parallel.comm.sum_over_group`: gradient passed through once per token).

Parameter gradients are partial per rank (each rank's positions); their sum over the group is the
single-process gradient. Under FSDP2 the reduce-scatter over the whole mesh does that sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, causal_mask_function

from longact_pl.ops.chunked import decoder_of, head_logprobs, lm_head_of
from longact_pl.ops.sequence_parallel.attention import KVRecord, UlyssesCall, inner_implementation
from longact_pl.ops.sequence_parallel.comm import SPGroup, sum_over_group
from longact_pl.ops.shared_prefix import TokenMaskHook, check_shared_prefix, group_spans
from longact_pl.rollout.masks import position_ids_from_mask


def full_mask(
    model: nn.Module,
    rows: int,
    q_length: int,
    kv_length: int,
    padding: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor | None:
    """The attention mask of the whole sequence, in the format of the model's attention implementation.

    Causal, queries at the last ``q_length`` of ``kv_length`` positions (a prompt before them), keys masked
    where ``padding [rows, kv_length]`` is False. ``None`` where the implementation needs no mask (SDPA's
    ``is_causal``) or has no mask function.
    """
    build = ALL_MASK_ATTENTION_FUNCTIONS.get(inner_implementation(model))
    if build is None:
        return None
    return build(
        batch_size=rows, q_length=q_length, kv_length=kv_length, q_offset=kv_length - q_length, kv_offset=0,
        mask_function=causal_mask_function, attention_mask=padding, allow_is_causal_skip=True,
        dtype=torch.float32, config=model.config, device=device,
    )  # fmt: skip


def _forward(decoder, ids, positions, mask, call, hook, real) -> torch.Tensor:
    """Hidden states ``[b, S, H]`` of this rank's ``ids [b, S]``; ``hook`` sees the real tokens ``[b, S]``."""
    if hook is not None:
        hook(real)
    try:
        return decoder(
            input_ids=ids,
            position_ids=positions,
            # a 4D mask is passed on untouched (the model builds no mask of its own for the local shapes);
            # the attention layers use call.mask either way
            attention_mask=mask if mask is not None and mask.dim() == 4 else None,
            use_cache=False,
            ulysses=call,
        ).last_hidden_state
    finally:
        if hook is not None:
            hook(None)


def _zero(tensors: list[torch.Tensor]) -> torch.Tensor | float:
    """Exactly 0, but depending on each tensor (``torch.where``, not ``0 * x``: 0 even where x is inf)."""
    tensors = [t for t in tensors if t.requires_grad and t.numel()]
    if not torch.is_grad_enabled() or not tensors:
        return 0.0
    never = torch.zeros((), dtype=torch.bool, device=tensors[0].device)
    return sum(torch.where(never, t.flatten()[0].float(), 0.0) for t in tensors)


class _Owned:
    """Hidden states of the completion tokens this rank predicts, and their places in ``[n, C]``."""

    def __init__(self, rows: int, width: int) -> None:
        self.rows, self.width = rows, width
        self.hidden: list[torch.Tensor] = []  # [m_i, H]
        self.index: list[torch.Tensor] = []  # [m_i] flat index row * C + column
        self.outputs: list[torch.Tensor] = []  # every forward's output [r, S, H]

    def add(self, out: torch.Tensor, rows: torch.Tensor, at: torch.Tensor, cols: torch.Tensor) -> None:
        """Positions ``at [k]`` of ``out [r, S, H]`` predict columns ``cols [k]`` of rows ``rows [r]``."""
        self.outputs.append(out)
        hidden = out[:, at]  # [r, k, H]
        if rows.numel() and cols.numel():
            self.hidden.append(hidden.reshape(-1, hidden.shape[-1]))  # [r * k, H]
            self.index.append((rows[:, None] * self.width + cols[None, :]).reshape(-1))  # [r * k]

    def logprobs(self, weight, bias, targets, temperature, with_entropy, chunk_size, sp: SPGroup):
        """Summed over the group: ``(logp [n, C] float32, entropy [n, C] or None)``."""
        n, width = self.rows, self.width
        owned = bool(self.hidden)
        # a rank that predicts no completion token still runs the head once, weighted 0, so the LM head gets a
        # (zero) gradient on every rank, as FSDP2's reduce-scatter expects
        hidden = torch.cat(self.hidden) if owned else self.outputs[-1][0, :1]  # [m, H]
        index = torch.cat(self.index) if owned else torch.zeros(1, dtype=torch.long, device=hidden.device)
        flat_targets = targets.reshape(-1)[index]  # [m]
        logp, entropy = head_logprobs(
            hidden.unsqueeze(0),
            weight,
            bias,
            flat_targets.unsqueeze(0),
            temperature,
            with_entropy,
            chunk_size,
        )  # [1, m]
        full = torch.zeros(n * width, dtype=torch.float32, device=hidden.device)  # [n * C]
        full = full.index_put((index,), logp[0]) if owned else full + _zero([logp])  # [n * C]
        # Every forward's output takes part in the loss (an exact zero where it predicts no completion token
        # here): each all-to-all's backward is a collective, and a rank whose outputs got no gradient would
        # skip it while the others wait for it.
        full = full + _zero(self.outputs)  # [n * C]
        ent = None
        if entropy is not None:
            ent = torch.zeros(n * width, dtype=torch.float32, device=hidden.device)  # [n * C]
            if owned:
                ent[index] = entropy[0]
            ent = sum_over_group(ent, sp).view(n, width)  # [n, C]
        return sum_over_group(full, sp).view(n, width), ent


def sp_completion_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_width: int,
    sp: SPGroup,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_size: int | None = None,
    token_mask_hook: TokenMaskHook | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row completion log-probs with each row split along the sequence over the group.

    Args:
        model: A Hugging Face causal LM switched to Ulysses attention (:func:`enable_ulysses`) with a plain
            linear LM head.
        input_ids: ``[n, L]`` left-padded prompts followed by right-padded completions (same on every rank).
        attention_mask: ``[n, L]``.
        completion_width: C.
        sp: The sequence-parallel group.
        temperature: Sampling temperature of the completions.
        with_entropy: Also return the per-token entropy (no gradient).
        chunk_size: Tokens per LM-head chunk (``None``: one chunk).
        token_mask_hook: Called with this rank's real-token mask ``[n, S]`` before the forward, ``None``
            after.

    Returns:
        ``(logp [n, C] float32, entropy [n, C] or None)``, equal on every rank of the group.
    """
    n, length = input_ids.shape
    width = completion_width
    shard = sp.shard_len(length)
    pad = shard * sp.size - length
    ids = F.pad(input_ids, (0, pad), value=0)  # [n, N * S]
    mask = F.pad(attention_mask, (0, pad), value=0)  # [n, N * S]
    positions = position_ids_from_mask(mask)  # [n, N * S]
    attn = full_mask(model, n, shard * sp.size, shard * sp.size, mask.bool(), ids.device)
    call = UlyssesCall(sp, attn, positions)
    hidden = _forward(
        decoder_of(model),
        sp.local(ids),
        sp.local(positions),
        attn,
        call,
        token_mask_hook,
        sp.local(mask).bool(),
    )  # [n, S, H]
    # global position t predicts token t + 1, i.e. completion column t - (L - C - 1)
    cols = torch.arange(sp.rank * shard, (sp.rank + 1) * shard, device=ids.device) - (
        length - width - 1
    )  # [S]
    own = (cols >= 0) & (cols < width)  # [S]
    owned = _Owned(n, width)
    owned.add(hidden, torch.arange(n, device=ids.device), own.nonzero()[:, 0], cols[own])
    weight, bias = lm_head_of(model)
    targets = input_ids[:, -width:]  # [n, C]
    return owned.logprobs(weight, bias, targets, temperature, with_entropy, chunk_size, sp)


def sp_grouped_completion_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_width: int,
    sp: SPGroup,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_size: int | None = None,
    token_mask_hook: TokenMaskHook | None = None,
    row_groups: torch.Tensor | None = None,
    group_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Completion log-probs with each group's prompt run once, prompt and completions split over the group.

    Args:
        model: As for :func:`sp_completion_logprobs`, with full attention only.
        input_ids: ``[N, P + C]`` left-padded prompts followed by right-padded completions.
        attention_mask: ``[N, P + C]``.
        completion_width: C.
        sp: The sequence-parallel group.
        temperature: Sampling temperature of the completions.
        with_entropy: Also return the per-token entropy (no gradient).
        chunk_size: Tokens per LM-head chunk (``None``: one chunk).
        token_mask_hook: Called with this rank's real-token mask of each forward (``[1, S_p]`` before a
            prompt pass, ``[G, S_c]`` before a completion pass) and ``None`` after it: each real token is
            counted once over the group.
        row_groups: ``[N]`` group index of each row (see :func:`longact_pl.ops.shared_prefix.group_spans`).
        group_size: G, used when ``row_groups`` is ``None``.

    Returns:
        ``(logp [N, C] float32, entropy [N, C] or None)``, equal on every rank of the group.
    """
    check_shared_prefix(model)
    decoder = decoder_of(model)
    width = input_ids.shape[1] - completion_width
    if width < 1 or completion_width < 1:
        raise ValueError(f"need a prompt and a completion, got P={width}, C={completion_width}")
    device = input_ids.device
    owned = _Owned(input_ids.shape[0], completion_width)
    comp_shard = sp.shard_len(completion_width)
    comp_pad = comp_shard * sp.size - completion_width
    comp_local = torch.arange(sp.rank * comp_shard, (sp.rank + 1) * comp_shard, device=device)  # [S_c]
    for start, stop in group_spans(input_ids, attention_mask, width, group_size, row_groups):
        rows = torch.arange(start, stop, device=device)  # [G]
        keep = attention_mask[start, :width].bool()  # [P]
        prompt = input_ids[start, :width][keep]  # [P_g]
        length = prompt.numel()
        shard = sp.shard_len(length)
        positions = torch.arange(shard * sp.size, device=device).unsqueeze(0)  # [1, N * S_p]
        padded = F.pad(prompt, (0, shard * sp.size - length), value=0).unsqueeze(0)  # [1, N * S_p]
        record = KVRecord(keep=length)
        call = UlyssesCall(
            sp, full_mask(model, 1, padded.shape[1], padded.shape[1], None, device), positions, record
        )
        real = sp.local(positions) < length  # [1, S_p]
        hidden = _forward(
            decoder, sp.local(padded), sp.local(positions), call.mask, call, token_mask_hook, real
        )
        record.open = False
        last = length - 1 - sp.rank * shard  # the prompt's last position predicts completion column 0
        at = rows.new_tensor([last] if 0 <= last < shard else [])  # [1] on the rank holding it, else [0]
        owned.add(hidden.expand(len(rows), -1, -1), rows, at, rows.new_zeros(len(at)))  # [G, S_p, H]
        comp_ids = F.pad(input_ids[start:stop, width:], (0, comp_pad), value=0)  # [G, N * S_c]
        comp_mask = F.pad(attention_mask[start:stop, width:], (0, comp_pad), value=0)  # [G, N * S_c]
        comp_pos = length + torch.arange(comp_ids.shape[1], device=device).expand(
            len(rows), -1
        )  # [G, N * S_c]
        padding = torch.cat(
            [comp_mask.new_ones(len(rows), length), comp_mask], dim=1
        ).bool()  # [G, P_g + N S_c]
        attn = full_mask(model, len(rows), comp_ids.shape[1], padding.shape[1], padding, device)
        call = UlyssesCall(sp, attn, comp_pos, prefix=record)
        out = _forward(
            decoder,
            sp.local(comp_ids),
            sp.local(comp_pos),
            attn,
            call,
            token_mask_hook,
            sp.local(comp_mask).bool(),
        )  # [G, S_c, H]
        cols = comp_local + 1  # completion position j predicts column j + 1
        own = cols < completion_width  # [S_c]
        owned.add(out, rows, own.nonzero()[:, 0], cols[own])
    weight, bias = lm_head_of(model)
    targets = input_ids[:, width:]  # [N, C]
    return owned.logprobs(weight, bias, targets, temperature, with_entropy, chunk_size, sp)
