"""Which channels of a head RoPE rotates together, read off the model's own rotary embedding.

RoPE rotates pairs of channels of every query/key head by a position-dependent angle. Which channels form a
pair depends on the model: Llama/Qwen3 rotate ``d`` with ``d + D/2`` ("rotate half"), Cohere/GLM rotate
``2i`` with ``2i + 1`` (interleaved), and with ``partial_rotary_factor < 1`` (Phi-3 variants, GPT-NeoX) only
the first ``rotary_dim`` channels are rotated at all. Rather than guess from the model type, the layout is
*measured*: the modeling file's ``apply_rotary_pos_emb(q, k, cos, sin)`` is applied to the unit vectors
``e_0 .. e_{D-1}`` at a few positions, with ``cos``/``sin`` from the model's ``*RotaryEmbedding`` module, and
two channels are a pair exactly when RoPE mixes one into the other. A channel that RoPE leaves alone (the
pass-through part of a partial rotary) is a unit of its own. Anything else (three channels mixing, a
rotary this probe cannot run) is refused with an error, so ``unit=rope_pair`` never pairs silently wrong.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor, nn

PROBE_POSITIONS = (1, 7, 1000, 12345)  # several angles, so no pair is missed by a sine that happens to be 0


def _refuse(model: nn.Module, why: str) -> ValueError:
    return ValueError(
        f"masking.unit=rope_pair needs rotary position embeddings whose channel pairs can be read from "
        f"{type(model).__name__}: {why}. Use masking/unit=channel or masking/unit=head."
    )


def _rotary_module(model: nn.Module) -> nn.Module | None:
    """The model's rotary embedding module (``model.model.rotary_emb`` in Hugging Face decoders)."""
    return next((m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding")), None)


def _apply_fn(attention: nn.Module):
    """``apply_rotary_pos_emb`` of the modeling file that defines ``attention``'s class."""
    return getattr(sys.modules.get(type(attention).__module__), "apply_rotary_pos_emb", None)


@torch.no_grad()
def rope_pairs(model: nn.Module, attention: nn.Module, head_dim: int) -> Tensor:
    """Unit of every channel of a head under RoPE: pairs rotated together share a unit.

    Args:
        model: The Hugging Face causal LM.
        attention: One of its attention modules (its modeling file provides ``apply_rotary_pos_emb``).
        head_dim: Channels per head.

    Returns:
        Head-local unit ids, numbered by their first channel (``[0, 1, .., 0, 1, ..]`` for rotate-half,
        ``[0, 0, 1, 1, ..]`` for interleaved; pass-through channels get units of their own).  # [head_dim]

    Raises:
        ValueError: If the model has no rotary embedding this probe can run, or RoPE mixes channels in
            anything other than pairs.
    """
    rotary, apply = _rotary_module(model), _apply_fn(attention)
    if rotary is None:
        raise _refuse(model, "it has no *RotaryEmbedding module (no RoPE)")
    if apply is None:
        raise _refuse(model, f"{type(attention).__module__} defines no apply_rotary_pos_emb(q, k, cos, sin)")
    param = next(model.parameters())
    positions = torch.tensor([PROBE_POSITIONS], device=param.device)  # [1, P]
    probe = torch.zeros(1, 1, head_dim, device=param.device, dtype=torch.float32)  # dtype/device carrier
    try:
        cos, sin = rotary(probe, positions)  # [1, P, rotary_dim]
        eye = torch.eye(head_dim, device=param.device)  # [D, D]: row c is e_c
        eye = eye.view(1, head_dim, 1, head_dim).expand(1, head_dim, len(PROBE_POSITIONS), head_dim)
        rotated, _ = apply(eye, eye, cos.float(), sin.float())  # [1, D, P, D]: e_c rotated at each position
    except Exception as err:  # noqa: BLE001 - any failure means the layout cannot be read
        raise _refuse(model, f"applying its rotary embedding to a probe failed ({err})") from err
    mixes = (rotated[0] != 0).any(1).cpu()  # [D, D]: e_c has a component on channel j
    mixes |= mixes.clone().T
    units = torch.full((head_dim,), -1, dtype=torch.long)  # [D]
    n = 0
    for c in range(head_dim):
        group = mixes[c].nonzero().flatten().tolist()
        if c not in group or len(group) > 2:
            raise _refuse(model, f"RoPE mixes channel {c} with channels {group}, not with one partner")
        if units[c] < 0:
            units[group] = n
            n += 1
    return units
