"""Which attention kernel runs the packed completion pass, and how the model's attention layers reach it.

Kernels (:data:`KERNELS`) for the packed pass of :mod:`longact_pl.ops.packed` (``T`` packed tokens, keys =
every span's prompt then the packed tokens):

* ``sdpa_mask``: the dense ``[1, 1, T, sum(P_s) + T]`` mask through the model's own mask builder and
  attention (SDPA or eager). Exact everywhere; the CPU path and the reference. On CUDA it computes the whole
  rectangle, repeats KV heads and excludes flash kernels.
* ``flex``: FlexAttention with a ``BlockMask`` built from the layout (:mod:`longact_pl.ops.flex_block_mask`):
  only tiles holding an allowed pair are computed, GQA without repeating KV heads (``enable_gqa``),
  compiled on CUDA. Its backward is CUDA-only.
* ``flash_varlen``: flash-attn's varlen kernels, two calls merged by log-sum-exp
  (:mod:`longact_pl.ops.varlen_attention`): exactly the allowed pairs. Needs ``pip install flash-attn``.

:func:`choose_kernel` picks one from ``model.attn_implementation`` and the device and says why.

How the layers reach a kernel: importing this module wraps transformers' registered attention functions
(``sdpa``, ``flex_attention``, ``flash_attention_2``) in a pass-through that, when the decoder call carries
``longact_packed=<KernelCall>`` (transformers hands decoder keyword arguments down to every attention call),
runs that call instead. The model's ``attn_implementation`` is never switched, so attention taps registered
under its name (saliency statistics) still see every query and key. ``eager`` has no registered function:
it only takes ``sdpa_mask``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import sdpa_mask

from longact_pl.ops.flex_block_mask import mark_tiles_dynamic, packed_block_mask
from longact_pl.ops.varlen_attention import FlashVarlen, VarlenPlan, varlen_attention

KERNELS = ("sdpa_mask", "flex", "flash_varlen")
KWARG = "longact_packed"  # the decoder keyword that carries a KernelCall to every attention layer
WRAPPED = ("sdpa", "flex_attention", "flash_attention_2")  # implementations whose function is wrapped
_FIELD = "model.attn_implementation"


def flash_attn_available() -> bool:
    """Whether flash-attn's varlen kernels can be imported."""
    try:
        FlashVarlen()
    except ImportError:
        return False
    return True


def choose_kernel(
    attn_implementation: str,
    device: torch.device | str,
    flash_available: bool | None = None,
    requested: str = "auto",
    field: str = "requested",
) -> tuple[str, str]:
    """The packed pass's kernel for a model's attention implementation on a device, and why.

    Pure apart from probing for flash-attn when ``flash_available`` is ``None`` and it is needed.

    Args:
        attn_implementation: ``sdpa``, ``eager``, ``flex_attention``, ``flash_attention_2`` or ``auto`` (the
            inner one under sequence parallelism: ``sdpa`` for ``ulysses_sdpa``).
        device: Where the pass runs (the training device, not where the weights sit before setup).
        flash_available: Whether flash-attn is installed (``None``: probe).
        requested: ``auto`` (the table in docs/kernels.md) or a kernel of :data:`KERNELS` to force (an
            escape hatch: ``sdpa_mask`` runs anywhere; ``flex`` trains on CUDA only; ``flash_varlen`` needs
            CUDA and flash-attn).
        field: The config field ``requested`` came from (named in errors).

    Returns:
        ``(kernel, reason)``; ``kernel`` in :data:`KERNELS`.

    Raises:
        ValueError: For an implementation the packed pass does not cover, or a requested kernel that
            cannot run here.
    """
    cuda = torch.device(device).type == "cuda"
    if requested != "auto":
        return _requested(requested, attn_implementation, cuda, flash_available, field)
    if attn_implementation == "eager":
        return "sdpa_mask", "eager attention: the dense packed mask in its additive format (reference path)"
    if attn_implementation not in ("sdpa", "flex_attention", "flash_attention_2", "auto"):
        raise ValueError(
            f"{_FIELD}={attn_implementation!r}: the packed pass covers sdpa, eager, flex_attention, "
            "flash_attention_2 and auto"
        )
    if not cuda:
        return "sdpa_mask", (
            f"{torch.device(device).type} device: the dense packed mask with SDPA (exact; FlexAttention's "
            "backward and flash-attn need CUDA)"
        )
    if attn_implementation == "flash_attention_2":
        if flash_available is None:
            flash_available = flash_attn_available()
        if flash_available:
            return "flash_varlen", "flash_attention_2 on CUDA: two flash-attn varlen calls, only real pairs"
        return "flex", "flash_attention_2 but flash-attn is not importable: FlexAttention block mask instead"
    return "flex", (
        f"{attn_implementation} on CUDA: FlexAttention block mask (only tiles with real pairs; the dense "
        "mask would compute the whole [T, P + T] rectangle and repeat KV heads)"
    )


def _requested(
    kernel: str, attn_implementation: str, cuda: bool, flash_available: bool | None, field: str
) -> tuple[str, str]:
    """A forced kernel, checked against the implementation and the device."""
    if kernel not in KERNELS:
        raise ValueError(f"{field}={kernel!r}: one of auto, {', '.join(KERNELS)}")
    if kernel != "sdpa_mask" and attn_implementation == "eager":
        raise ValueError(f"{field}={kernel!r} with {_FIELD}=eager: eager attention only takes sdpa_mask")
    if kernel != "sdpa_mask" and not cuda:
        raise ValueError(f"{field}={kernel!r} needs a CUDA device (use auto or sdpa_mask)")
    if kernel == "flash_varlen" and not (
        flash_attn_available() if flash_available is None else flash_available
    ):
        raise ValueError(f"{field}=flash_varlen needs flash-attn (pip install flash-attn), or use auto")
    return kernel, f"{field}={kernel}"


def _flex_function(device: torch.device):
    """FlexAttention, compiled on CUDA (dynamic shapes: every micro-batch packs a different length)."""
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda":
        return flex_attention  # unfused eager reference (forward only on CPU)
    global _COMPILED_FLEX
    if _COMPILED_FLEX is None:
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=True)
    return _COMPILED_FLEX


_COMPILED_FLEX = None


class KernelCall:
    """What one packed forward tells every attention layer (the ``longact_packed`` keyword argument).

    A plain class on purpose (FSDP2 copies dataclasses found in forward arguments; calls must be counted
    on this one object).

    Attributes:
        kernel: Its name in :data:`KERNELS`.
        calls: Attention calls served so far (:meth:`check` compares them with the decoder's layers).
    """

    def __init__(self, kernel: str, run) -> None:
        self.kernel, self._run, self.calls = kernel, run, 0

    def __call__(self, module: nn.Module, query, key, value, **kwargs) -> torch.Tensor:
        """``query [1, h, T, d]``, ``key``/``value`` ``[1, h_kv, K, d]`` -> ``[1, T, h, d]``."""
        for name, off in (("dropout", 0.0), ("softcap", None), ("s_aux", None), ("sliding_window", None)):
            if kwargs.get(name, off) not in (off, 0, None):
                raise NotImplementedError(f"the packed {self.kernel} kernel does not support {name}")
        scale = kwargs.get("scaling")
        scale = float(scale) if scale is not None else query.shape[-1] ** -0.5
        self.calls += 1
        return self._run(query, key, value, scale)

    def check(self, layers: int) -> None:
        """Raise unless each of the ``layers`` attention layers ran this kernel once.

        Raises:
            RuntimeError: If the model's attention did not dispatch through transformers' interface.
        """
        if self.calls != layers:
            raise RuntimeError(
                f"the packed {self.kernel} kernel served {self.calls} of {layers} attention layers: "
                "this model's attention does not call transformers' AttentionInterface; "
                f"set {_FIELD}=eager (the dense mask) or module.logprobs.pack_completions=false"
            )


def _dispatching(original):
    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        call = kwargs.pop(KWARG, None)
        if call is None:
            return original(module, query, key, value, attention_mask, *args, **kwargs)
        return call(module, query, key, value, **kwargs), None

    attention.longact_packed_dispatch = True  # type: ignore[attr-defined]
    return attention


def install() -> None:
    """Wrap the attention functions of :data:`WRAPPED` (idempotent; pass-through without the keyword)."""
    mapping = AttentionInterface._global_mapping
    for name in WRAPPED:
        fn = mapping.get(name)
        if fn is not None and not getattr(fn, "longact_packed_dispatch", False):
            AttentionInterface.register(name, _dispatching(fn))


install()  # before any attention tap captures the functions it wraps


def same_dtype(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Query, key and value in one dtype: autocast's where it is on, else the query's.

    Under bf16 autocast a model's q/k can come out float32 (Qwen3's q/k RMSNorm multiplies by a float32
    weight) while v is bf16; SDPA casts them itself, FlexAttention and flash-attn need one dtype.
    """
    device = tensors[0].device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else tensors[0].dtype
    return tuple(t.to(dtype) for t in tensors)


def kernel_call(kernel: str, layout, part=None) -> KernelCall:
    """The :class:`KernelCall` running ``kernel`` on a packed layout.

    Args:
        kernel: ``flex``, ``flash_varlen`` or ``sdpa_mask`` (dispatched SDPA on the dense bool mask: for
            models whose own implementation is not ``sdpa``/``eager``).
        layout: The :class:`~longact_pl.ops.packed.PackedCompletions`.
        part: Varlen part kernel (``flash_varlen``; default :class:`FlashVarlen`; tests pass
            :class:`~longact_pl.ops.varlen_attention.TorchVarlen`).
    """
    if kernel == "flex":
        block_mask = mark_tiles_dynamic(packed_block_mask(layout))
        flex = _flex_function(layout.owner.device)

        def run(q, k, v, scale):
            q, k, v = same_dtype(q, k, v)
            out = flex(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=True)  # [1, h, T, d]
            return out.transpose(1, 2).contiguous()  # [1, T, h, d]

    elif kernel == "flash_varlen":
        plan, part = VarlenPlan.from_layout(layout), part or FlashVarlen()

        def run(q, k, v, scale):
            return varlen_attention(*same_dtype(q, k, v), plan, part, scale)  # [1, T, h, d]

    elif kernel == "sdpa_mask":
        dense_mask = sdpa_mask(
            batch_size=1, q_length=layout.num_tokens, kv_length=layout.num_prompt_keys + layout.num_tokens,
            mask_function=layout.mask_function(), allow_is_causal_skip=False, device=layout.owner.device,
        )  # [1, 1, T, K] bool  # fmt: skip

        def run(q, k, v, scale):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask, scale=scale, enable_gqa=True)
            return out.transpose(1, 2).contiguous()  # [1, T, h, d]

    else:
        raise ValueError(f"unknown packed attention kernel {kernel!r} (one of {list(KERNELS)})")
    return KernelCall(kernel, run)


def packed_attention(model: nn.Module, implementation: str, layout, kernel: str, part=None):
    """Decoder keyword arguments that make the packed forward attend with ``kernel``.

    Args:
        model: The causal LM (its mask builder gives the reference mask).
        implementation: Its own attention implementation (``inner_implementation``).
        layout: The packed layout.
        kernel: One of :data:`KERNELS` (:func:`choose_kernel`).
        part: Varlen part kernel override (tests).

    Returns:
        ``(inputs, call)``: ``attention_mask`` (and ``longact_packed``) for the decoder call, and the
        :class:`KernelCall` to :meth:`~KernelCall.check` after the forward (``None``: the model's own path).

    Raises:
        ValueError: If the kernel cannot be dispatched for this implementation (``eager``).
    """
    if kernel == "sdpa_mask" and implementation in ("sdpa", "eager"):
        return {"attention_mask": layout.attention_mask(model, torch.float32)}, None
    if implementation not in WRAPPED:
        raise ValueError(
            f"{_FIELD}={implementation!r} runs the packed pass only on the dense mask (sdpa_mask), "
            f"not {kernel!r}; set {_FIELD} to one of {list(WRAPPED)}"
        )
    call = kernel_call(kernel, layout, part)
    # a 4-D placeholder: transformers passes a ready 4-D mask through as is, and builds nothing [T, K]
    placeholder = torch.ones(1, 1, 0, 0, dtype=torch.bool, device=layout.owner.device)
    return {"attention_mask": placeholder, KWARG: call}, call
