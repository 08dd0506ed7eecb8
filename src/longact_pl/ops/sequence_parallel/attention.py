"""Ulysses attention, plugged in through transformers' attention-function interface.

:func:`enable_ulysses` registers ``ulysses_<inner>`` (``inner`` = the model's own implementation: ``sdpa``,
``eager``, ``flash_attention_2``, ...) in ``transformers.AttentionInterface`` and sets the model to it. The
registered function wraps the real ``inner`` function; no model code is copied, so every model family whose
attention calls ``ALL_ATTENTION_FUNCTIONS`` gets sequence parallelism. The mask interface maps the new name to
``inner``'s mask builder, so forwards without sequence parallelism (generation, calibration, evaluation) run
exactly as before.

A sequence-parallel forward passes ``ulysses=UlyssesCall(...)`` as a keyword argument of the decoder call;
transformers hands it down to every attention call (and gradient checkpointing keeps it for the replay in
backward). With it, each attention layer:

1. gets this rank's positions of every head (``[b, h, S, d]``, RoPE already applied at the true positions),
   repeats KV heads when there are fewer than N (``N % h_kv == 0``),
2. all-to-all: ``[b, h / N, N * S, d]``, every position of this rank's heads,
3. records (prompt pass) or prepends (completion pass) the prompt's key/values in this head-split layout,
4. runs the real attention function with the full-sequence mask from the call, or, where the call carries a
   packed kernel (``kernel``: FlexAttention on a block mask or flash-attn varlen for the packed completion
   pass, :mod:`longact_pl.ops.attention_kernels`), that kernel on the same head-split tensors (GQA: its
   ``h / N`` query heads on its ``h_kv' / N`` KV heads, no mask tensor at all),
5. all-to-all back: ``[b, S, h, d]``, this rank's positions of every head.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

from longact_pl.ops.sequence_parallel.comm import SPGroup, heads_to_seq, seq_to_heads

PREFIX = "ulysses_"
_FIELD = "trainer.strategy.sequence_parallel_size"  # the config field named in errors


class KVRecord:
    """The prompt's key/values of every layer in the head-split layout ``[1, h_kv / N, P, d]``.

    A plain class on purpose (as :class:`UlyssesCall`): FSDP2 maps its forward arguments through dataclasses,
    dicts and lists, copying them, and the attention layers must all write into this one object.

    Attributes:
        keep: P, the real prompt length (positions past it are sequence-parallel padding, dropped).
        layers: Layer index -> ``(keys, values)``.
        open: Whether attention calls still store; closed once the prompt pass is done, so a checkpoint replay
            of the prompt pass in backward does not keep a second copy.
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.open = True


class UlyssesCall:
    """What one sequence-parallel forward tells every attention layer (the ``ulysses`` keyword argument).

    Attributes:
        sp: The sequence-parallel group.
        mask: The full-sequence mask in the inner implementation's format (``None``: causal, no padding).
        position_ids: ``[b, N * S]`` positions of the whole sequence (flash attention's varlen path reads
            them).
        record: Prompt pass: where the head-split key/values go.
        prefix: Completion pass: the prompt's head-split key/values, prepended to every row's.
        kernel: Packed completion pass: the :class:`~longact_pl.ops.attention_kernels.KernelCall` that attends
            instead of the inner function (``(module, q [1, h / N, T, d], k, v [1, h_kv' / N, K, d], **kw)
            -> [1, T, h / N, d]``); ``mask`` is then unused.
    """

    def __init__(
        self,
        sp: SPGroup,
        mask: torch.Tensor | None,
        position_ids: torch.Tensor | None = None,
        record: KVRecord | None = None,
        prefix: KVRecord | None = None,
        kernel: Callable | None = None,
    ) -> None:
        self.sp, self.mask, self.position_ids = sp, mask, position_ids
        self.record, self.prefix, self.kernel = record, prefix, kernel


def kv_repeats(num_heads: int, num_kv_heads: int, size: int) -> int:
    """How often each KV head is repeated so the N ranks split the KV heads evenly along with the query heads.

    Raises:
        ValueError: If N divides neither the query heads nor (or is not a multiple of) the KV heads.
    """
    if num_heads % size:
        raise ValueError(
            f"{_FIELD}={size} must divide the number of attention heads ({num_heads}): each rank attends "
            f"with num_attention_heads / {size} heads; choose a divisor of {num_heads}"
        )
    if num_kv_heads % size == 0:
        return 1
    if size % num_kv_heads == 0:
        return size // num_kv_heads
    raise ValueError(
        f"{_FIELD}={size} and num_key_value_heads={num_kv_heads}: one must divide the other (KV heads are "
        "split over the ranks, or repeated until there is one per rank)"
    )


def check_heads(config, size: int) -> None:
    """Check a model config's head counts against a sequence-parallel size (see :func:`kv_repeats`)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(text.num_attention_heads)
    kv_repeats(heads, int(getattr(text, "num_key_value_heads", None) or heads), size)


class _HeadShard:
    """The attention module as the inner function sees it on one rank: the local heads' GQA group size."""

    def __init__(self, module: nn.Module, groups: int) -> None:
        self._module = module
        self.num_key_value_groups = groups

    def __getattr__(self, name: str):
        return getattr(self._module, name)


def _ulysses(inner: Callable) -> Callable:
    def attention(module, query, key, value, attention_mask, ulysses: UlyssesCall | None = None, **kwargs):
        if ulysses is None:  # not a sequence-parallel forward: the model's own attention
            return inner(module, query, key, value, attention_mask, **kwargs)
        sp = ulysses.sp
        repeats = kv_repeats(query.shape[1], key.shape[1], sp.size)
        if repeats > 1:  # fewer KV heads than ranks: [b, h_kv * r, S, d]
            key = key.repeat_interleave(repeats, dim=1)
            value = value.repeat_interleave(repeats, dim=1)
        query = seq_to_heads(query, sp)  # [b, h / N, N * S, d]
        key = seq_to_heads(key, sp)  # [b, h_kv' / N, N * S, d]
        value = seq_to_heads(value, sp)  # [b, h_kv' / N, N * S, d]
        layer = module.layer_idx
        if ulysses.record is not None and ulysses.record.open:
            keep = ulysses.record.keep
            ulysses.record.layers[layer] = (key[:, :, :keep], value[:, :, :keep])  # [1, h_kv' / N, P, d]
        if ulysses.prefix is not None:
            keys, values = ulysses.prefix.layers[layer]  # [1, h_kv' / N, P, d]
            rows = key.shape[0]
            key = torch.cat([keys.expand(rows, -1, -1, -1), key], dim=2)  # [b, h_kv' / N, P + N * S, d]
            value = torch.cat([values.expand(rows, -1, -1, -1), value], dim=2)  # [b, h_kv' / N, P + N * S, d]
        shard = _HeadShard(module, query.shape[1] // key.shape[1])
        if ulysses.kernel is not None:  # the packed pass's kernel: GQA on the local heads, no mask tensor
            out = ulysses.kernel(shard, query, key, value, **kwargs)  # [1, N * S, h / N, d]
            return heads_to_seq(out, sp), None  # [1, S, h, d]
        if ulysses.position_ids is not None:
            kwargs["position_ids"] = ulysses.position_ids
        out, _ = inner(shard, query, key, value, ulysses.mask, **kwargs)  # [b, N * S, h / N, d]
        return heads_to_seq(out, sp), None  # [b, S, h, d]

    return attention


# registered name -> the inner implementation it wraps
_INNER: dict[str, str] = {}


def inner_implementation(model: nn.Module) -> str:
    """The model's own attention implementation (``sdpa`` for ``ulysses_sdpa``)."""
    current = model.config._attn_implementation
    return _INNER.get(current, current)


def enable_ulysses(model: nn.Module, size: int) -> None:
    """Switch ``model`` to Ulysses attention (idempotent); forwards without ``ulysses=`` run as before.

    Raises:
        ValueError: If the head counts do not split over ``size`` ranks.
        NotImplementedError: If the model does not dispatch attention through ``AttentionInterface``.
    """
    check_heads(model.config, size)
    current = model.config._attn_implementation
    if current in _INNER:
        return
    if not model._can_set_attn_implementation():
        raise NotImplementedError(
            f"{type(model).__name__} does not use transformers' AttentionInterface; sequence parallelism "
            f"({_FIELD} > 1) needs a model that does (Llama, Qwen2/3, Mistral, ...)"
        )
    if current == "eager":  # not in the interface's mapping: each modeling file has its own
        modeling = sys.modules[type(model).__module__]
        inner = getattr(modeling, "eager_attention_forward", None)
        if inner is None:
            raise NotImplementedError(f"cannot find eager_attention_forward for {type(model).__name__}")
        name = f"{PREFIX}eager_{modeling.__name__.rsplit('.', 1)[-1]}"
    else:  # the real function (not an instance override such as masking's attention tap)
        inner, name = AttentionInterface._global_mapping[current], PREFIX + current
    AttentionInterface.register(name, _ulysses(inner))
    if current in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[current])
    _INNER[name] = current
    # set directly: set_attn_implementation re-validates names (flash kernels from the hub, ...)
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        config._attn_implementation = name
