"""Training log-probs of G completions that share one prompt, with the prompt run once per group.

Naively each of the G rows of a GRPO group recomputes the (long) prompt. Here every group is two forwards:

1. the prompt alone (left padding stripped, batch 1), recording each layer's key/value states with their
   autograd history, and keeping only the last position's hidden state (it predicts completion token 0);
2. the G completions (batch G), positions continuing at the prompt length, attending to the prompt's
   key/values broadcast over the G rows.

Both passes run the base model (``model.model``); the LM head is applied once, to the ``[N, C, H]`` hidden
states that predict completion tokens (the prompt's last one, the completions' first ``C - 1``), optionally
in checkpointed chunks (:func:`longact_pl.ops.chunked.head_logprobs`). This is ``logits_to_keep=1`` for the
prompt pass without a second head call.

The gradient reaching the prompt through its key/values is the sum over the G rows, exactly what the naive
per-row computation accumulates, so parameter gradients match the naive path.

Order (``interleave``, the default): the two forwards run layer by layer (:mod:`longact_pl.ops.interleaved`:
prompt then completions through layer 0, then layer 1, ...; one checkpoint per layer under activation
checkpointing), so only one layer's prompt key/values and their gradients exist at a time; values and
gradients are bit-identical to ``interleave=False`` (the prompt through every layer, then the
completions), which keeps every layer's key/values and, at the switch to the prompt's backward, their
gradients.

Gradient checkpointing: Hugging Face drops ``past_key_values`` inside checkpointed decoder layers. The caches
below are replay-safe (the recording cache overwrites instead of appending; the prefix cache never stores),
so while this function runs each layer is marked ``_can_checkpoint_with_cache``. The checkpoint must be
non-reentrant (``use_reentrant=False``, what ``longact_pl.models.types.finish`` sets): reentrant
checkpointing would silently drop the gradient that flows into the prompt through the cache.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer

from longact_pl.ops.chunked import decoder_of, head_logprobs, lm_head_of
from longact_pl.ops.interleaved import Stream, interleaved_forward, layer_inputs, sized_layer
from longact_pl.ops.packed import PackedCall, PackedPrefixLayer, packed_completion_logprobs
from longact_pl.ops.passes import (
    TokenMaskHook,
    dummy_rows,
    embed_together,
    hooked_forward,
    with_embeds,
    zero_tie,
)


class _RecordLayer(DynamicLayer):
    """Prompt pass: keeps the latest key/values (overwrites on a checkpoint replay instead of appending)."""

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys, self.values = key_states, value_states  # [1, h, P, d]
        return key_states, value_states


class _PrefixLayer(DynamicLayer):
    """Completion pass: the prompt's key/values ``[1, h, P, d]`` shared by every row; stores nothing."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values  # [1, h, P, d]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = key_states.shape[0]
        keys = torch.cat([self.keys.expand(rows, -1, -1, -1), key_states], dim=-2)  # [G, h, P + C, d]
        values = torch.cat([self.values.expand(rows, -1, -1, -1), value_states], dim=-2)  # [G, h, P + C, d]
        return keys, values


def full_attention_only(model: nn.Module) -> bool:
    """Whether every decoder layer attends to the whole prefix (no sliding window, no hybrid layers)."""
    config = model.config.get_text_config()
    types = getattr(config, "layer_types", None) or ["full_attention"]
    return all(t == "full_attention" for t in types) and not getattr(config, "use_sliding_window", False)


def check_shared_prefix(model: nn.Module) -> int:
    """Number of decoder layers; runs no forward.

    Raises:
        NotImplementedError: For layouts the prefix caches do not model (sliding-window or hybrid
            attention) and LM heads that are not a plain linear map.
    """
    if not full_attention_only(model):
        raise NotImplementedError("shared-prefix log-probs support full-attention decoders only")
    lm_head_of(model)
    return int(model.config.get_text_config().num_hidden_layers)


@contextmanager
def _cache_through_checkpointing(decoder: nn.Module) -> Iterator[None]:
    """Let checkpointed decoder layers keep ``past_key_values`` (safe for the replay-safe caches above)."""
    layers = [m for m in decoder.modules() if getattr(m, "gradient_checkpointing", False)]
    for layer in layers:
        func = getattr(layer, "_gradient_checkpointing_func", None)
        if isinstance(func, functools.partial) and func.keywords.get("use_reentrant", True):
            raise ValueError(
                "shared-prefix log-probs need non-reentrant gradient checkpointing: "
                'gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})'
            )
    saved = [layer.__dict__.get("_can_checkpoint_with_cache") for layer in layers]
    try:
        for layer in layers:
            layer._can_checkpoint_with_cache = True
        yield
    finally:
        for layer, value in zip(layers, saved):
            if value is None:
                del layer._can_checkpoint_with_cache
            else:
                layer._can_checkpoint_with_cache = value


def _runs(changes: torch.Tensor) -> list[tuple[int, int]]:
    """Row ranges ``[start, stop)`` of ``N`` rows, a new range after each ``True`` of ``changes [N - 1]``."""
    starts = [0] + [i + 1 for i, c in enumerate(changes.tolist()) if c]
    return list(zip(starts, starts[1:] + [len(changes) + 1]))


def group_spans(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_width: int,
    group_size: int | None,
    row_groups: torch.Tensor | None = None,
) -> list[tuple[int, int]]:
    """Row ranges ``[start, stop)`` whose rows share one prompt.

    Args:
        input_ids: ``[N, P + C]``.
        attention_mask: ``[N, P + C]``.
        prompt_width: P.
        group_size: G (``N`` must be a multiple); ``None`` finds runs of consecutive equal prompts.
        row_groups: ``[N]`` group index of each row (overrides ``group_size``): spans are runs of equal
            indices, so their number depends on the row layout only, never on the prompts' contents
            (under FSDP every rank must run the same number of forwards, even if two groups hold the same
            prompt).

    Raises:
        ValueError: If ``N`` is not a multiple of G or the rows of a span have different prompts.
    """
    n = input_ids.shape[0]
    prompt = torch.where(attention_mask[:, :prompt_width].bool(), input_ids[:, :prompt_width], -1)  # [N, P]
    if row_groups is not None:
        if row_groups.shape != (n,):
            raise ValueError(f"row_groups must have shape [{n}], got {tuple(row_groups.shape)}")
        spans = _runs(row_groups[1:] != row_groups[:-1])  # [N - 1] changes
        if any(not (prompt[a:b] == prompt[a]).all() for a, b in spans):
            raise ValueError("rows with the same row_groups index must share the same prompt")
        return spans
    if group_size is None:
        return _runs((prompt[1:] != prompt[:-1]).any(-1))  # [N - 1] changes
    if group_size < 1 or n % group_size:
        raise ValueError(f"{n} rows are not whole groups of group_size={group_size}")
    groups = prompt.view(n // group_size, group_size, prompt_width)  # [B, G, P]
    if not (groups == groups[:, :1]).all():
        raise ValueError("rows of a group must share the same prompt (micro-batches must hold whole groups)")
    return [(s, s + group_size) for s in range(0, n, group_size)]


def prompt_counted(spans: list[tuple[int, int]], count_prompts: torch.Tensor | None) -> list[bool]:
    """Whether statistics hooks count each span's prompt: one of its rows is set in ``count_prompts [N]``.

    ``None``: every span's.
    """
    if count_prompts is None:
        return [True] * len(spans)
    return [bool(count_prompts[a:b].any()) for a, b in spans]


def prompt_pass(
    decoder: nn.Module,
    prompt: torch.Tensor,
    num_layers: int,
    hook: TokenMaskHook | None,
    count: bool = True,
    embeds: torch.Tensor | None = None,
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Run one prompt ``[1, P_g]`` (no padding) keeping each layer's key/values.

    ``embeds``: its ``[1, P_g, H]`` input embeddings (:func:`embed_together`; ``None``: the decoder embeds).

    Returns:
        ``([(keys [1, h, P_g, d], values [1, h, P_g, d])] per layer, last hidden state [1, 1, H])``; the last
        hidden state predicts completion token 0.
    """
    record = Cache(layers=[_RecordLayer() for _ in range(num_layers)])
    real = torch.ones_like(prompt, dtype=torch.bool) if count else None  # [1, P_g]
    inputs = _prompt_inputs(prompt, embeds)
    last = hooked_forward(decoder, hook, real, **inputs, past_key_values=record)[:, -1:]
    return [(layer.keys, layer.values) for layer in record.layers], last  # ..., [1, 1, H]


def _prompt_inputs(prompt: torch.Tensor, embeds: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The decoder inputs of a prompt ``[1, P_g]`` (no padding), both orders (the cache aside)."""
    positions = torch.arange(prompt.shape[1], device=prompt.device).unsqueeze(0)  # [1, P_g]
    inputs = {"input_ids": prompt, "position_ids": positions}
    return inputs if embeds is None else with_embeds(inputs, embeds)


def _completion_inputs(ids: torch.Tensor, mask: torch.Tensor, length: int, embeds: torch.Tensor) -> dict:
    """The decoder inputs of G right-padded completions ``[G, C]`` after a ``length``-token prompt.

    ``embeds``: their ``[G, C, H]`` input embeddings (:func:`embed_together`).
    """
    rows, width = ids.shape
    positions = torch.arange(length, length + width, device=ids.device)  # [C]
    return {
        "inputs_embeds": embeds,
        "attention_mask": torch.cat([mask.new_ones(rows, length), mask], dim=1),  # [G, P_g + C]
        "position_ids": positions.unsqueeze(0).expand(rows, -1),  # [G, C]
    }


def _two_pass_padded(decoder, prompt, num_layers, ids, mask, hook, count: bool = True, dummy: bool = False):
    """:func:`prompt_pass`, then the G right-padded completions ``[G, C]`` on its key/values.

    Returns ``(last [1, 1, H], hidden [G, C, H])``; ``count`` and ``dummy`` as in :func:`_interleaved_padded`.
    """
    prompt_embeds, embeds = embed_together(decoder, prompt, ids)  # [1, P_g, H], [G, C, H]
    kv, last = prompt_pass(decoder, prompt, num_layers, hook if not dummy else None, count and not dummy,
                           prompt_embeds)  # fmt: skip
    prefix = Cache(layers=[_PrefixLayer(keys, values) for keys, values in kv])
    real = mask.bool() if not dummy else None  # [G, C]
    inputs = _completion_inputs(ids, mask, prompt.shape[1], embeds)
    return last, hooked_forward(decoder, hook, real, **inputs, past_key_values=prefix)


def _prompt_stream(decoder, prompt, embeds, num_layers, hook, count: bool) -> Stream:
    """A prompt ``[1, P_g]`` (no padding) as a stream recording its key/values (interleaved pass)."""
    real = torch.ones_like(prompt, dtype=torch.bool) if count and hook is not None else None  # [1, P_g]
    record = Cache(layers=[_RecordLayer() for _ in range(num_layers)])
    return layer_inputs(decoder, real, **_prompt_inputs(prompt, embeds), past_key_values=record)


def _interleaved_padded(
    decoder, prompt, num_layers, ids, mask, hook, count: bool = True, dummy: bool = False
):
    """:func:`_two_pass_padded`, layer by layer: ``(last [1, 1, H], [G, C, H])``.

    ``count``: the hook counts the prompt; ``dummy``: it counts nothing (lock-step dummies).
    """
    length = prompt.shape[1]
    prompt_embeds, embeds = embed_together(decoder, prompt, ids)  # [1, P_g, H], [G, C, H]
    real = mask.bool() if not dummy and hook is not None else None  # [G, C]
    sized = Cache(layers=[sized_layer(length, ids) for _ in range(num_layers)])
    completions = layer_inputs(
        decoder, real, **_completion_inputs(ids, mask, length, embeds), past_key_values=sized
    )
    stream = _prompt_stream(decoder, prompt, prompt_embeds, num_layers, hook, count and not dummy)
    (last,), out = interleaved_forward(decoder, [stream], completions, lambda kv: _PrefixLayer(*kv[0]), hook)
    return last, out  # [1, 1, H], [G, C, H]


def _interleaved_packed(decoder, packed: PackedCall, prompts, embeds, counted, num_layers, hook):
    """The prompts ``[1, P_s]`` and the packed completions, layer by layer: ``(lasts [S, H], [1, T, H])``.

    ``embeds``: the prompts' input embeddings, then the packed row's (:func:`embed_together`).
    """
    streams = [
        _prompt_stream(decoder, p, e, num_layers, hook, c) for p, e, c in zip(prompts, embeds, counted)
    ]
    keys = sum(p.shape[1] for p in prompts)
    completions = layer_inputs(
        decoder,
        packed.real if hook is not None else None,  # [1, T]
        past_key_values=Cache(layers=[sized_layer(keys, packed.real) for _ in range(num_layers)]),
        **with_embeds(packed.inputs, embeds[-1]),
    )
    lasts, hidden = interleaved_forward(
        decoder, streams, completions,
        lambda kv: PackedPrefixLayer(torch.cat([k for k, _ in kv], -2), torch.cat([v for _, v in kv], -2)),
        hook,
    )  # fmt: skip
    if packed.call is not None:
        packed.call.check(num_layers)
    return torch.cat([last[0] for last in lasts]), hidden  # [S, H], [1, T, H]


def grouped_completion_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_width: int,
    group_size: int | None,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_size: int | None = None,
    token_mask_hook: TokenMaskHook | None = None,
    row_groups: torch.Tensor | None = None,
    pack: bool = False,
    pad_spans: int = 0,
    entropy_grad: bool = False,
    count_prompts: torch.Tensor | None = None,
    kernel: str | None = None,
    interleave: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token completion log-probs with the prompt of each group computed once.

    Same contract and numbers as :func:`longact_pl.ops.logprobs.completion_logprobs` on the full rows.

    Args:
        model: A Hugging Face causal LM with full attention (Llama, Qwen3, ...).
        input_ids: ``[N, P + C]`` left-padded prompt followed by the right-padded completion.
        attention_mask: ``[N, P + C]``.
        completion_width: C.
        group_size: G: rows ``g*G .. g*G+G-1`` share a prompt. ``None`` groups consecutive rows with equal
            prompts (any row order is then correct; sharing only happens within runs).
        temperature: Sampling temperature the completions were drawn at.
        with_entropy: Also return the per-token entropy (no gradient unless ``entropy_grad``).
        chunk_size: Tokens per LM-head chunk (see :func:`longact_pl.ops.chunked.head_logprobs`);
            ``None`` = one chunk.
        token_mask_hook: Called with the bool mask of real tokens aligned to the next forward's input
            (``[1, P_g]`` before a prompt pass, ``[G, C]`` before a padded completion pass, ``[1, T]`` before
            the packed one) and with ``None`` after each forward, so statistics hooks count every prompt
            token once; never around the lock-step dummies' forwards (their packed tokens are ``False``).
        row_groups: ``[N]`` group index of each row; overrides ``group_size`` (see :func:`group_spans`).
        pack: Run all completions in one packed row without padding (:mod:`longact_pl.ops.packed`): one
            completion forward per call instead of one per span.
        pad_spans: Extra dummy spans (a 1-token prompt and a 2-token completion each, outputs discarded) so
            that data-parallel ranks with fewer spans run as many forwards (FSDP's lock-step).
        entropy_grad: The entropy keeps its gradient (entropy bonus).
        count_prompts: ``[N]`` bool: a span's prompt pass is told to ``token_mask_hook`` only if one of its
            rows is set (a group split over micro-batches counts its prompt in one of them); ``None``: all.
        kernel: The packed pass's attention kernel (``pack``; ``None``: chosen for the tensors' device,
            :func:`~longact_pl.ops.attention_kernels.choose_kernel`).
        interleave: Run prompts and completions layer by layer (:mod:`longact_pl.ops.interleaved`: one
            layer's prompt key/values and their gradients alive at a time; the statistics hook is then told
            each layer run's mask); ``False``: every prompt through all layers, then the completions.

    Returns:
        ``(logp [N, C] float32, entropy [N, C] or None)``; with ``pack`` zeros at padding.
    """
    num_layers = check_shared_prefix(model)
    decoder = decoder_of(model)
    weight, bias = lm_head_of(model)
    width = input_ids.shape[1] - completion_width
    if width < 1 or completion_width < 1:
        raise ValueError(f"need a prompt and a completion, got P={width}, C={completion_width}")
    if pad_spans < 0:
        raise ValueError(f"pad_spans must be >= 0, got {pad_spans}")
    spans = group_spans(input_ids, attention_mask, width, group_size, row_groups) if len(input_ids) else []
    counted = prompt_counted(spans, count_prompts)
    dummy_prompt = input_ids.new_zeros(1, 1)  # [1, 1]
    targets = input_ids[:, width:]  # [N, C]
    with _cache_through_checkpointing(decoder):
        if pack:
            prompts = [input_ids[a, :width][attention_mask[a, :width].bool()].unsqueeze(0) for a, _ in spans]
            prompts += [dummy_prompt] * pad_spans
            counted += [False] * pad_spans
            packed = PackedCall.build(
                model, [p.shape[1] for p in prompts], spans, targets, attention_mask[:, width:], kernel
            )
            embeds = embed_together(decoder, *prompts, packed.inputs["input_ids"])  # ..., [1, T, H]
            if interleave:
                lasts, out = _interleaved_packed(
                    decoder, packed, prompts, embeds, counted, num_layers, token_mask_hook
                )
                return packed.logprobs(model, out, lasts, temperature, with_entropy, chunk_size, entropy_grad)
            states = [
                prompt_pass(decoder, p, num_layers, token_mask_hook, c, e)
                for p, e, c in zip(prompts, embeds, counted)
            ]
            return packed_completion_logprobs(
                model, decoder, states, packed, embeds[-1], temperature, with_entropy, chunk_size,
                token_mask_hook, entropy_grad,
            )  # fmt: skip
        run = _interleaved_padded if interleave else _two_pass_padded
        hidden, ties = [], []
        for (start, stop), count in zip(spans, counted):
            keep = attention_mask[start, :width].bool()  # [P]
            prompt = input_ids[start, :width][keep].unsqueeze(0)  # [1, P_g]
            ids, mask = input_ids[start:stop, width:], attention_mask[start:stop, width:]  # [G, C]
            last, out = run(
                decoder, prompt, num_layers, ids, mask, token_mask_hook, count
            )  # [1, 1, H], [G, C, H]
            hidden.append(torch.cat([last.expand(stop - start, -1, -1), out[:, :-1]], dim=1))  # [G, C, H]
            ties.append(out)
        for _ in range(pad_spans):
            ids, mask = dummy_rows(1, 2, input_ids)  # [1, 2]
            ties += list(run(decoder, dummy_prompt, num_layers, ids, mask, None, dummy=True))
    if not hidden:  # only dummies: nothing to predict
        logp = torch.zeros(targets.shape, device=input_ids.device)  # [0, C]
        return logp + zero_tie(ties), (torch.zeros_like(logp) if with_entropy else None)
    logp, entropy = head_logprobs(
        torch.cat(hidden), weight, bias, targets, temperature, with_entropy, chunk_size, entropy_grad
    )
    return logp + zero_tie(ties), entropy
