"""Pieces the log-prob passes share: a hook-announced decoder forward, and lock-step dummies and ties.

A decoder forward is announced to statistics hooks with its real-token mask; what keeps data-parallel ranks
in lock-step is dummy completions and a zero that ties every forward into the backward.

Under FSDP every decoder forward all-gathers each layer's parameters and every backward through it
reduce-scatters their gradients: ranks must run the same number of forwards and take all of them into the
backward. A rank with fewer spans than another runs dummy ones (:func:`dummy_rows`); a forward whose outputs
do not reach the loss (a 1-token completion, a dummy) is tied to it by :func:`zero_tie`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# told the real-token mask [b, t] of the next forward's input, and None after it (statistics hooks)
TokenMaskHook = Callable[[torch.Tensor | None], None]


def hooked_forward(
    decoder: nn.Module, hook: TokenMaskHook | None, real: torch.Tensor | None, **inputs
) -> torch.Tensor:
    """``decoder(**inputs).last_hidden_state``; ``hook`` is told ``real`` ``[b, t]`` before, ``None`` after.

    ``real=None``: the hook is not called (the forward is not counted by statistics hooks).
    """
    if hook is not None and real is not None:
        hook(real)
    try:
        # use_cache=False: the cache passed in is used anyway; avoids the checkpointing warning
        return decoder(**inputs, use_cache=False).last_hidden_state
    finally:
        if hook is not None and real is not None:
            hook(None)


def embed_together(decoder: nn.Module, *ids: torch.Tensor) -> list[torch.Tensor]:
    """The input embeddings of every ``ids`` tensor from one embedding call: ``[*ids_k.shape, H]`` each.

    One call means one ``[V, H]`` embedding gradient in the backward instead of one per forward (each
    zero-filled and then summed into the weight's gradient: a float32 pass over the vocabulary each). Both
    orders of the shared-prefix pass embed their prompt(s) and completions this way, so their gradients
    stay bit-identical.
    """
    flat = torch.cat([i.reshape(-1) for i in ids])  # [sum n_k]
    embeds = decoder.get_input_embeddings()(flat)  # [sum n_k, H]
    parts = embeds.split([i.numel() for i in ids])
    return [part.view(*i.shape, -1) for part, i in zip(parts, ids)]  # [*ids_k.shape, H] each


def with_embeds(inputs: dict, embeds: torch.Tensor) -> dict:
    """Decoder keyword arguments ``inputs`` with ``input_ids`` replaced by ``inputs_embeds``."""
    return {**{k: v for k, v in inputs.items() if k != "input_ids"}, "inputs_embeds": embeds}


def zero_tie(tensors: list[torch.Tensor]) -> torch.Tensor | float:
    """A scalar that is exactly 0 but depends on each tensor (0.0 without autograd).

    Added to the log-probs, it keeps every forward in the backward graph even when none of its outputs
    reaches the loss (a 1-token completion, a lock-step dummy): data-parallel ranks then run the same
    backward collectives. ``torch.where`` instead of ``0 * x``: exactly 0 even where ``x`` is not finite.
    """
    tensors = [t for t in tensors if t.requires_grad and t.numel()]
    if not torch.is_grad_enabled() or not tensors:
        return 0.0
    never = torch.zeros((), dtype=torch.bool, device=tensors[0].device)
    return sum(torch.where(never, t.flatten()[0].float(), 0.0) for t in tensors)


def dummy_rows(count: int, width: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` lock-step dummy completions: ids ``[count, max(width, 2)]`` of token 0, 2 real tokens."""
    cols = max(width, 2)
    mask = (torch.arange(cols, device=like.device) < 2).long().expand(count, -1)  # [count, cols]
    return like.new_zeros(count, cols), mask
