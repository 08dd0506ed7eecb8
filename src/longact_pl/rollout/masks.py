"""Pure helpers shared by rollout engines: padding and EOS masks."""

from __future__ import annotations

import torch


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into a batch.

    Args:
        prompts: B lists of token ids.
        pad_id: Padding token id.

    Returns:
        ``(input_ids [B, P], attention_mask [B, P])`` with P the longest prompt.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt must have at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)  # [B, P]
    mask = torch.zeros((len(prompts), width), dtype=torch.long)  # [B, P]
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids, mask


def completion_mask_after_eos(completion_ids: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """Mask of real completion tokens: everything up to and including the first EOS.

    Args:
        completion_ids: ``[N, C]`` generated token ids.
        eos_ids: Token ids that end a completion.

    Returns:
        ``[N, C]`` long mask (1 = real token).
    """
    is_eos = torch.isin(completion_ids, torch.tensor(eos_ids, device=completion_ids.device))  # [N, C]
    # Number of EOS tokens strictly before each position; a token is real while none came before it.
    eos_before = is_eos.long().cumsum(-1) - is_eos.long()  # [N, C]
    return (eos_before == 0).long()  # [N, C]


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, matching what ``generate`` uses: ``[N, L] -> [N, L]``."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [N, L]


def check_sampling(group_size: int, max_new_tokens: int, temperature: float, top_p: float) -> None:
    """Validate the sampling settings every rollout engine shares; errors name the config key."""
    if group_size < 2:
        raise ValueError(f"rollout.group_size must be >= 2 for group-relative advantages, got {group_size}")
    if temperature <= 0:
        raise ValueError(f"rollout.temperature must be > 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"rollout.top_p must be in (0, 1], got {top_p}")
    if max_new_tokens < 1:
        raise ValueError(f"rollout.max_new_tokens must be >= 1, got {max_new_tokens}")
