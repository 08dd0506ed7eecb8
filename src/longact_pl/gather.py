"""Full (unsharded) weights of a model whose parameters may be FSDP2 ``DTensor`` shards.

Used where every rank needs the whole model: pushing weights into a rollout engine and exporting the
trained policy. Parameters are gathered one at a time, so the peak extra memory is one full tensor on the
device plus the CPU copy being built; under FSDP2 every rank must call these functions in the same order
(each ``full_tensor()`` is a collective).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is a ``DTensor`` (FSDP2 / tensor parallel)."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def full_tensor(t: Tensor) -> Tensor:
    """The whole tensor: ``DTensor.full_tensor()`` (a collective) or ``t`` itself."""
    return t.full_tensor() if isinstance(t, DTensor) else t


@torch.no_grad()
def full_state_dict(
    model: nn.Module, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> dict[str, Tensor]:
    """Every parameter and persistent buffer as a full, contiguous tensor on ``device``.

    Tied parameters (one ``Parameter`` under two names, e.g. embeddings and LM head) are gathered once and
    map to the same tensor under both names, so ``save_pretrained(state_dict=...)`` still sees them as tied.

    Args:
        model: The (possibly FSDP2-sharded) model.
        dtype: Cast floating-point tensors to this dtype (``None`` keeps each tensor's dtype).
        device: Where the returned tensors live.

    Returns:
        ``state_dict()`` names -> full tensors.
    """
    out: dict[str, Tensor] = {}
    seen: dict[int, Tensor] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:
            out[name] = seen[id(t)]
            continue
        full = full_tensor(t.detach())
        if dtype is not None and full.is_floating_point():
            full = full.to(dtype)
        seen[id(t)] = out[name] = full.to(device).contiguous()
    return out


def save_full_pretrained(model: nn.Module, tokenizer, out_dir: Path, write: bool = True) -> None:
    """``save_pretrained`` of the full model and its tokenizer into ``out_dir``.

    Under FSDP2 every rank must call it (the weights are gathered); only ranks with ``write`` write.
    """
    state = full_state_dict(model) if is_sharded(model) else None
    if not write:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, state_dict=state)
    tokenizer.save_pretrained(out_dir)
