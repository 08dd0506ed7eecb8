"""Helpers shared by every rollout engine: padding, EOS ids and masks, and the one RolloutBatch builder."""

from __future__ import annotations

import torch

from longact_pl.rollout.types import RolloutBatch


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


def eos_token_ids(policy: torch.nn.Module, tokenizer) -> list[int]:
    """Token ids that end a completion: the generation config's (one or several), else the tokenizer's EOS.

    Every engine resolves them here, so HF and vLLM stop on the same tokens.
    """
    eos = getattr(getattr(policy, "generation_config", None), "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        return [int(e) for e in eos]
    return [int(eos if eos is not None else tokenizer.eos_token_id)]


def build_batch(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion: torch.Tensor,
    behaviour_logp: torch.Tensor,
    group_size: int,
    eos_ids: list[int],
    tokenizer,
    lengths: torch.Tensor | None = None,
) -> RolloutBatch:
    """Lay generated ids out as ``[left-padded prompt | right-padded completion]`` (every engine's output).

    Completion tokens after the first EOS (or beyond ``lengths``) are masked and replaced by padding; their
    behaviour log-probs are set to 0.

    Args:
        prompt_ids: ``[B, P]`` left-padded prompts.
        prompt_mask: ``[B, P]`` their attention mask.
        completion: ``[N, C]`` generated ids, ``N = B * group_size``, rows grouped by prompt.
        behaviour_logp: ``[N, C]`` the sampler's log-probs of those ids.
        group_size: Completions per prompt (1 for greedy decoding).
        eos_ids: Ids that end a completion (:func:`eos_token_ids`).
        tokenizer: Pad id and decoding of the completions.
        lengths: ``[N]`` generated tokens per row, where rows were padded on the right by the caller
            (``None``: every column was generated).

    Returns:
        The :class:`RolloutBatch`.
    """
    pad = tokenizer.pad_token_id
    comp_mask = completion_mask_after_eos(completion, eos_ids)  # [N, C]
    if lengths is not None:
        columns = torch.arange(completion.shape[1], device=completion.device)  # [C]
        comp_mask = comp_mask * (columns.unsqueeze(0) < lengths.to(completion.device).unsqueeze(1)).long()
    completion = torch.where(comp_mask.bool(), completion, pad)  # [N, C]
    return RolloutBatch(
        input_ids=torch.cat(
            [prompt_ids.repeat_interleave(group_size, dim=0), completion], dim=1
        ),  # [N, P + C]
        attention_mask=torch.cat([prompt_mask.repeat_interleave(group_size, dim=0), comp_mask], dim=1),
        completion_mask=comp_mask,
        behaviour_logp=behaviour_logp * comp_mask,  # [N, C]
        completions=tokenizer.batch_decode(completion, skip_special_tokens=True),
        prompt_width=prompt_ids.shape[1],
        group_size=group_size,
    )


def check_sampling(
    group_size: int, max_new_tokens: int, temperature: float, top_p: float, top_k: int = 0
) -> None:
    """Validate the sampling settings every rollout engine shares; errors name the config key."""
    if group_size < 2:
        raise ValueError(f"rollout.group_size must be >= 2 for group-relative advantages, got {group_size}")
    if temperature <= 0:
        raise ValueError(f"rollout.temperature must be > 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"rollout.top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"rollout.top_k must be >= 0 (0 = off), got {top_k}")
    if max_new_tokens < 1:
        raise ValueError(f"rollout.max_new_tokens must be >= 1, got {max_new_tokens}")
