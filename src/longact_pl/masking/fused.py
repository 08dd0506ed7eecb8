"""Fused Q/K/V projections: which rows of the fused weight belong to the queries and which to the keys.

Two layouts are known (``D`` = head_dim, ``H`` query heads, ``G`` key/value heads):

* ``contiguous`` (Phi-3 ``qkv_proj``): rows ``[Q: H*D | K: G*D | V: G*D]``.
* ``per_head`` (GPT-NeoX ``query_key_value``): for each head ``h``, rows ``h*3D + [q: D | k: D | v: D]``.

A target on a fused module becomes two parts, ``<module>[q]`` and ``<module>[k]``, each scored and masked like
a separate ``q_proj`` / ``k_proj`` (rows in head-major order, so units and GQA pairing apply unchanged); the V
rows are never selected (updated densely, or frozen with ``others=frozen``). A fused module of any other model
is refused with an error naming the module and its unknown layout: guessing would mask the wrong rows.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# leaf names of fused Q/K/V projections in Hugging Face models (known layout or not)
FUSED_NAMES = ("qkv_proj", "query_key_value", "Wqkv", "W_pack", "c_attn", "qkv")

# (model_type, leaf name) -> layout of the rows
LAYOUTS = {("phi3", "qkv_proj"): "contiguous", ("gpt_neox", "query_key_value"): "per_head"}


def is_fused(name: str) -> bool:
    """Whether a module name's leaf is a fused Q/K/V projection name."""
    return name.rpartition(".")[2] in FUSED_NAMES


def _heads(config) -> tuple[int, int, int]:
    """``(query heads, key/value heads, head_dim)`` from a Hugging Face text config."""
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return heads, kv, head_dim


def fused_parts(model: nn.Module, name: str, linear: nn.Linear) -> dict[str, Tensor]:
    """Rows of the query and key parts of a fused projection.

    Args:
        model: The Hugging Face model (its config gives model_type, heads and head_dim).
        name: Qualified module name of the fused projection.
        linear: The fused projection.

    Returns:
        ``{"q": rows, "k": rows}``, each in head-major channel order.  # [H*D], [G*D] long

    Raises:
        ValueError: If the layout of this model's fused module is not known, or its size does not match it.
    """
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    model_type, leaf = getattr(config, "model_type", "?"), name.rpartition(".")[2]
    layout = LAYOUTS.get((model_type, leaf))
    known = ", ".join(f"{n} on {t} ({lay})" for (t, n), lay in LAYOUTS.items())
    if layout is None:
        raise ValueError(
            f"masking.targets: {name} ({model_type}) is a fused Q/K/V projection whose row layout is not "
            f"known, so its query and key rows cannot be told apart (known: {known}). Target separate "
            "q_proj/k_proj, or add the layout to longact_pl/masking/fused.py"
        )
    heads, kv, d = _heads(config)
    if layout == "contiguous":
        expected = (heads + 2 * kv) * d
        q = torch.arange(heads * d)  # [H*D]
        k = heads * d + torch.arange(kv * d)  # [G*D]
    else:  # per_head: [H, 3, D]
        expected = 3 * heads * d
        base = torch.arange(heads).repeat_interleave(d) * 3 * d + torch.arange(d).repeat(heads)  # [H*D]
        q, k = base, base + d
    if linear.out_features != expected:
        raise ValueError(
            f"masking.targets: {name} has {linear.out_features} rows, but the {layout} layout of "
            f"{model_type} with {heads} query heads, {kv} key/value heads and head_dim {d} has {expected}"
        )
    return {"q": q, "k": k}
