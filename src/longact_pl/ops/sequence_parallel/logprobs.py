"""Completion log-probs with every sequence split over the N ranks of a sequence-parallel group.

Same contract and numbers as the single-process paths (per row:
:func:`longact_pl.ops.chunked.chunked_completion_logprobs`; the prompt once per group, completions padded or
packed: :func:`longact_pl.ops.shared_prefix.grouped_completion_logprobs`); every rank of the group passes
the same rows and gets the same ``[n, C]`` log-probs back.

* Sharding: a sequence of ``L`` tokens is padded at its end to ``N * S`` (``S = ceil(L / N)``) and rank ``r``
  runs positions ``[r * S, (r + 1) * S)`` with their true ``position_ids`` (so RoPE is that of the whole
  sequence). Padding at the end is never attended by a real token (causal; the packed row's padding is a row
  of its own), so it changes nothing.
* Attention: :mod:`longact_pl.ops.sequence_parallel.attention` (all-to-all to head-split, the model's own
  attention function over every position, all-to-all back) with the full-sequence mask built here by
  transformers' mask function for the model's implementation. The packed completion pass instead runs the
  log-prob plan's packed kernel (``LogprobPlan.packed_kernel``): on CUDA FlexAttention on a block mask or
  flash-attn varlen (:mod:`longact_pl.ops.attention_kernels`), built from the whole packed layout (every
  rank holds every position of its heads after the all-to-all), so no ``[T, sum(P_s) + T]`` mask exists;
  the dense mask (``sdpa_mask``) stays the CPU path and the reference.
* Shared prompt: the prompt pass records each layer's key/values after the all-to-all, i.e. in the head-split
  layout ``[1, h_kv / N, P, d]`` the completion pass attends to; the completion pass (a group's G padded rows,
  or every completion of the call packed in one row, :mod:`longact_pl.ops.packed`, split along it) prepends
  them to its own head-split key/values.
* LM head: :class:`~longact_pl.ops.sequence_parallel.owned.OwnedTokens`.
* Lock-step dummies (``pad_spans``): a 1-token prompt and a 2-token completion each, run the same way.

Parameter gradients are partial per rank (each rank's positions); their sum over the group is the
single-process gradient. Under FSDP2 the reduce-scatter over the whole mesh does that sum.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, causal_mask_function

from longact_pl.ops.chunked import decoder_of, lm_head_of
from longact_pl.ops.packed import PackedCompletions, packed_kernel_call, packed_layout
from longact_pl.ops.passes import TokenMaskHook, dummy_rows, hooked_forward
from longact_pl.ops.positions import position_ids_from_mask
from longact_pl.ops.sequence_parallel.attention import KVRecord, UlyssesCall, inner_implementation
from longact_pl.ops.sequence_parallel.comm import SPGroup
from longact_pl.ops.sequence_parallel.owned import OwnedTokens
from longact_pl.ops.shared_prefix import check_shared_prefix, group_spans, prompt_counted


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


def _forward(decoder, sp: SPGroup, ids, positions, call: UlyssesCall, hook, real) -> torch.Tensor:
    """Hidden states ``[b, S, H]`` of this rank's share of ``ids`` / ``positions`` ``[b, N * S]``.

    ``hook`` is told this rank's real tokens ``sp.local(real)`` (``real=None``: not told).
    """
    mask = call.mask
    return hooked_forward(
        decoder, hook, None if real is None else sp.local(real), input_ids=sp.local(ids),
        position_ids=sp.local(positions),
        # a 4D mask is passed on untouched (the model builds none of its own for the local shapes); the
        # attention layers use call.mask either way
        attention_mask=mask if mask is not None and mask.dim() == 4 else None, ulysses=call,
    )  # fmt: skip


def _pad_to(t: torch.Tensor, length: int, value: int = 0) -> torch.Tensor:
    """``t [..., L]`` right-padded with ``value`` to ``length``."""
    return F.pad(t, (0, length - t.shape[-1]), value=value)


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
    entropy_grad: bool = False,
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
        with_entropy: Also return the per-token entropy.
        chunk_size: Tokens per LM-head chunk (``None``: one chunk).
        token_mask_hook: Called with this rank's real-token mask ``[n, S]`` before the forward, ``None``
            after.
        entropy_grad: The entropy keeps its gradient (the entropy bonus); else a detached metric.

    Returns:
        ``(logp [n, C] float32, entropy [n, C] or None)``, equal on every rank of the group.
    """
    n, length = input_ids.shape
    width, shard = completion_width, sp.shard_len(length)
    ids = _pad_to(input_ids, shard * sp.size)  # [n, N * S]
    mask = _pad_to(attention_mask, shard * sp.size)  # [n, N * S]
    positions = position_ids_from_mask(mask)  # [n, N * S]
    call = UlyssesCall(
        sp, full_mask(model, n, ids.shape[1], ids.shape[1], mask.bool(), ids.device), positions
    )
    hidden = _forward(decoder_of(model), sp, ids, positions, call, token_mask_hook, mask.bool())  # [n, S, H]
    # global position t predicts token t + 1, i.e. completion column t - (L - C - 1)
    cols = torch.arange(sp.rank * shard, (sp.rank + 1) * shard, device=ids.device) - (
        length - width - 1
    )  # [S]
    own = (cols >= 0) & (cols < width)  # [S]
    owned = OwnedTokens(n, width)
    owned.add_grid(hidden, torch.arange(n, device=ids.device), own.nonzero()[:, 0], cols[own])
    weight, bias = lm_head_of(model)
    return owned.logprobs(
        weight, bias, input_ids[:, -width:], temperature, with_entropy, chunk_size, sp, entropy_grad
    )


def _prompt_pass(model, decoder, sp: SPGroup, prompt: torch.Tensor, hook, count: bool = True):
    """One prompt ``[P_g]`` split over the group.

    Returns:
        ``(record, hidden [1, S_p, H], last)``: each layer's head-split key/values, this rank's hidden
        states, and the local index of the prompt's last position (``-1`` where another rank holds it).
    """
    length = prompt.numel()
    shard = sp.shard_len(length)
    positions = torch.arange(shard * sp.size, device=prompt.device).unsqueeze(0)  # [1, N * S_p]
    record = KVRecord(keep=length)
    call = UlyssesCall(sp, full_mask(model, 1, shard * sp.size, shard * sp.size, None, prompt.device),
                       positions, record=record)  # fmt: skip
    hidden = _forward(
        decoder, sp, _pad_to(prompt, shard * sp.size).unsqueeze(0), positions, call, hook,
        (positions < length) if count else None,
    )  # [1, S_p, H]  # fmt: skip
    record.open = False
    last = length - 1 - sp.rank * shard
    return record, hidden, last if 0 <= last < shard else -1


def _padded_pass(model, decoder, sp: SPGroup, record: KVRecord, ids, mask, hook, count: bool = True):
    """A prompt's G right-padded completions ``[G, C]``, split along C: this rank's hidden ``[G, S_c, H]``."""
    rows, width = ids.shape
    shard = sp.shard_len(width)
    ids, mask = _pad_to(ids, shard * sp.size), _pad_to(mask, shard * sp.size)  # [G, N * S_c]
    positions = record.keep + torch.arange(ids.shape[1], device=ids.device).expand(rows, -1)  # [G, N * S_c]
    padding = torch.cat([mask.new_ones(rows, record.keep), mask], dim=1).bool()  # [G, P_g + N * S_c]
    call = UlyssesCall(sp, full_mask(model, rows, ids.shape[1], padding.shape[1], padding, ids.device),
                       positions, prefix=record)  # fmt: skip
    return _forward(decoder, sp, ids, positions, call, hook, mask.bool() if count else None)


def _split_layout(layout: PackedCompletions, multiple: int) -> PackedCompletions:
    """``layout`` with padding tokens appended to a multiple: a row of their own on the last span's prompt.

    The last span's, so the packed tokens stay ordered span after span (what varlen packing needs); no real
    token attends to the padding row, and its outputs are never scored.
    """
    extra = -layout.num_tokens % multiple
    if extra == 0:
        return layout
    dev, rows = layout.input_ids.device, len(layout.cu_seqlens) - 1
    col = torch.arange(extra, device=dev)  # [e]
    last = len(layout.prompt_lengths) - 1
    return dataclasses.replace(
        layout,
        input_ids=_pad_to(layout.input_ids, layout.num_tokens + extra),
        position_ids=torch.cat([layout.position_ids, layout.prompt_lengths[last] + col.unsqueeze(0)], 1),
        owner=torch.cat([layout.owner, col.new_full((extra,), last)]),
        seq=torch.cat([layout.seq, col.new_full((extra,), rows)]),
        col=torch.cat([layout.col, col]),
        cu_seqlens=torch.cat([layout.cu_seqlens, layout.cu_seqlens[-1:] + extra]),
    )


def _packed_attention(model, sp: SPGroup, layout: PackedCompletions, prefix: KVRecord, kernel: str | None):
    """The packed pass's :class:`UlyssesCall`: the dense mask (``sdpa_mask`` on sdpa/eager) or a kernel call.

    The same choice and dispatch as the single-process pass (``packed_attention``); the kernel attends on
    the head-split tensors inside the Ulysses wrapper, and the decoder gets the zero-size placeholder mask.

    Args:
        model: The causal LM (its own implementation: ``inner_implementation``).
        sp: The group.
        layout: The whole packed layout, split padding included (the same on every rank).
        prefix: Every span's prompt key/values in the head-split layout.
        kernel: The plan's packed kernel (``None``: chosen for the tokens' device as the single-process pass
            does, ``choose_kernel``).

    Raises:
        ValueError: If the kernel cannot be dispatched for the model's implementation (``eager``).
    """
    inputs, call = packed_kernel_call(model, layout, kernel)
    return UlyssesCall(sp, inputs["attention_mask"], layout.position_ids, prefix=prefix, kernel=call)


def _packed_pass(
    model, decoder, sp, prompts, lengths, spans, targets, mask, hook, owned: OwnedTokens, kernel=None
) -> None:
    """Every completion of the call packed in one row, split along it, on the spans' recorded prompts."""
    rows, width = targets.shape
    layout, real_tokens = packed_layout(lengths, spans, targets, mask)  # lock-step dummies included
    layout = _split_layout(layout, sp.size)
    total = layout.num_tokens
    prefix = KVRecord(keep=sum(lengths))
    for i in prompts[0][0].layers:
        prefix.layers[i] = tuple(torch.cat([r.layers[i][j] for r, _, _ in prompts], dim=2) for j in (0, 1))
    call = _packed_attention(model, sp, layout, prefix, kernel)
    counted = (torch.arange(total, device=targets.device) < real_tokens).unsqueeze(0)  # [1, T]
    hidden = _forward(decoder, sp, layout.input_ids, layout.position_ids, call, hook, counted)  # [1, S, H]
    if call.kernel is not None:
        call.kernel.check(len(prefix.layers))
    owned.tie(hidden)
    # local position g predicts packed token g + 1 when that token continues the same row (column > 0)
    shard = total // sp.size
    g = torch.arange(sp.rank * shard, (sp.rank + 1) * shard, device=targets.device)  # [S]
    nxt = (g + 1).clamp(max=total - 1)  # [S]
    own = (g + 1 < real_tokens) & (layout.col[nxt] > 0)  # [S]
    owned.add(hidden[0, own], layout.seq[nxt[own]] * width + layout.col[nxt[own]])
    # a row's first token is predicted by its prompt's last position, on the rank holding it
    first = layout.cu_seqlens[:rows][
        layout.cu_seqlens[1 : rows + 1] > layout.cu_seqlens[:rows]
    ].long()  # [r']
    for s, (_, out, last) in enumerate(prompts[: len(spans)]):
        starts = first[layout.owner[first] == s]  # packed index of each first token of span s's rows
        if last >= 0 and starts.numel():
            owned.add(out[0, last].expand(len(starts), -1), layout.seq[starts] * width)


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
    pack: bool = False,
    pad_spans: int = 0,
    entropy_grad: bool = False,
    count_prompts: torch.Tensor | None = None,
    kernel: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Completion log-probs with each group's prompt run once, prompts and completions split over the group.

    Args:
        model: As for :func:`sp_completion_logprobs`, with full attention only.
        input_ids: ``[N, P + C]`` left-padded prompts followed by right-padded completions.
        attention_mask: ``[N, P + C]``.
        completion_width: C.
        sp: The sequence-parallel group.
        temperature: Sampling temperature of the completions.
        with_entropy: Also return the per-token entropy.
        chunk_size: Tokens per LM-head chunk (``None``: one chunk).
        token_mask_hook: Called with this rank's real-token mask of each forward (``[1, S_p]`` before a
            prompt pass, ``[G, S_c]`` before a padded completion pass, ``[1, S]`` before the packed one) and
            ``None`` after it: each real token is counted once over the group; not told about dummies.
        row_groups: ``[N]`` group index of each row (see :func:`longact_pl.ops.shared_prefix.group_spans`).
        group_size: G, used when ``row_groups`` is ``None``.
        pack: Run all completions in one packed row (:mod:`longact_pl.ops.packed`), split along it.
        pad_spans: Lock-step dummy spans (see ``grouped_completion_logprobs``).
        entropy_grad: The entropy keeps its gradient (the entropy bonus); else a detached metric.
        count_prompts: ``[N]`` bool: which spans' prompt passes the hook is told about (see
            ``grouped_completion_logprobs``); ``None``: all.
        kernel: With ``pack``: the packed pass's attention kernel, the plan's ``packed_kernel``
            (:data:`~longact_pl.ops.attention_kernels.KERNELS`; ``None``: chosen from the model's attention
            implementation and the device, ``choose_kernel``).

    Returns:
        ``(logp [N, C] float32, entropy [N, C] or None)``, equal on every rank of the group; with ``pack``
        zeros at padding.
    """
    check_shared_prefix(model)
    decoder = decoder_of(model)
    width = input_ids.shape[1] - completion_width
    if width < 1 or completion_width < 1:
        raise ValueError(f"need a prompt and a completion, got P={width}, C={completion_width}")
    spans = group_spans(input_ids, attention_mask, width, group_size, row_groups) if len(input_ids) else []
    targets, comp_mask = input_ids[:, width:], attention_mask[:, width:]  # [N, C]
    owned = OwnedTokens(*targets.shape)
    dummy = input_ids.new_zeros(1)  # a 1-token prompt
    real = [input_ids[a, :width][attention_mask[a, :width].bool()] for a, _ in spans]  # [P_g] each
    counted = prompt_counted(spans, count_prompts)
    prompts = [_prompt_pass(model, decoder, sp, p, token_mask_hook, c) for p, c in zip(real, counted)]
    prompts += [_prompt_pass(model, decoder, sp, dummy, None, count=False) for _ in range(pad_spans)]
    for _, out, _ in prompts:
        owned.tie(out)
    if pack and prompts:
        lengths = [r.keep for r, _, _ in prompts]
        _packed_pass(
            model, decoder, sp, prompts, lengths, spans, targets, comp_mask, token_mask_hook, owned, kernel
        )
    else:
        shard = sp.shard_len(completion_width)
        cols = torch.arange(sp.rank * shard, (sp.rank + 1) * shard, device=input_ids.device) + 1  # [S_c]
        for (record, out, last), (a, b) in zip(prompts, spans):
            rows = torch.arange(a, b, device=input_ids.device)  # [G]
            at = rows.new_tensor([last] if last >= 0 else [])
            owned.add_grid(out.expand(len(rows), -1, -1), rows, at, rows.new_zeros(len(at)))  # column 0
            hidden = _padded_pass(model, decoder, sp, record, targets[a:b], comp_mask[a:b], token_mask_hook)
            own = cols < completion_width  # completion position j predicts column j + 1
            owned.add_grid(hidden, rows, own.nonzero()[:, 0], cols[own])
        for record, _, _ in prompts[len(spans) :]:
            ids, mask = dummy_rows(1, 2, input_ids)  # [1, 2]
            owned.tie(_padded_pass(model, decoder, sp, record, ids, mask, None, count=False))
    weight, bias = lm_head_of(model)
    return owned.logprobs(weight, bias, targets, temperature, with_entropy, chunk_size, sp, entropy_grad)
