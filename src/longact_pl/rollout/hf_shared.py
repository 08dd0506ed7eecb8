"""Rollouts with Hugging Face ``generate``, prefilling each prompt once instead of once per sample.

``generate(num_return_sequences=G)`` repeats every prompt G times before the prefill, so a long prompt is
encoded G times, and keeps G copies of its key/values for every decode step. Here the B left-padded prompts
(all but their last token) are prefilled once; ``generate`` then continues from that cache, feeding only the
last prompt token, with the same logits processors and the same random-number consumption as
:class:`HFRollout`, so a seed gives the same samples (up to floating-point ties). With ``shared_attention``
(default) the prompt key/values stay single per prompt and decode steps use
:func:`longact_pl.rollout.prefix_generate.shared_prefix_attention`; without it the cache is repeated G times
and the model's own attention runs.
"""

from __future__ import annotations

import contextlib

import torch
from transformers import DynamicCache

from longact_pl.ops.shared_prefix import full_attention_only
from longact_pl.rollout.hf import HFRollout
from longact_pl.rollout.masks import completion_mask_after_eos, left_pad, position_ids_from_mask
from longact_pl.rollout.prefix_generate import SharedPrefixCache, shared_prefix_decoding
from longact_pl.rollout.types import RolloutBatch


def prefill(policy: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> DynamicCache | None:
    """Cache of all but the last prompt token, one row per prompt.

    Args:
        policy: The causal LM (in eval mode).
        ids: ``[B, P]`` left-padded prompts.
        mask: ``[B, P]`` their attention mask.

    Returns:
        A cache of B rows and ``P - 1`` positions, or ``None`` when ``P == 1``.
    """
    if ids.shape[1] < 2:
        return None
    cache = DynamicCache(config=policy.config)
    head, head_mask = ids[:, :-1], mask[:, :-1]  # [B, P - 1]
    policy(
        input_ids=head,
        attention_mask=head_mask,
        position_ids=position_ids_from_mask(head_mask),  # [B, P - 1]
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return cache


def eos_ids_of(policy: torch.nn.Module, tokenizer) -> list[int]:
    """The token ids that end a completion (generation config first, else the tokenizer's EOS)."""
    eos = policy.generation_config.eos_token_id
    if isinstance(eos, (list, tuple)):
        return list(eos)
    return [eos if eos is not None else tokenizer.eos_token_id]


class SharedPrefixHFRollout(HFRollout):
    """:class:`HFRollout` with one prefill per prompt; same constructor (plus one switch), same output.

    Args:
        group_size: G, completions per prompt (>= 2 for group-relative advantages).
        max_new_tokens: Generation budget per completion.
        temperature: Sampling temperature (> 0).
        top_p: Nucleus sampling mass in (0, 1].
        top_k: Top-k filter (0 = off).
        shared_attention: Keep one copy of each prompt's key/values and decode with
            :func:`~longact_pl.rollout.prefix_generate.shared_prefix_attention` (full-attention models);
            ``False`` (and models with sliding-window or hybrid layers) repeat the prefilled cache G times
            and keep the model's attention.
    """

    def __init__(
        self,
        group_size: int = 4,
        max_new_tokens: int = 40,
        temperature: float = 0.7,
        top_p: float = 1.0,
        top_k: int = 0,
        shared_attention: bool = True,
    ) -> None:
        super().__init__(group_size, max_new_tokens, temperature, top_p, top_k)
        self.shared_attention = shared_attention

    @torch.no_grad()
    def generate(
        self,
        policy: torch.nn.Module,
        tokenizer,
        prompts: list[list[int]],
        greedy: bool = False,
        seed: int = 0,
        max_new_tokens: int | None = None,
    ) -> RolloutBatch:
        """Sample completions (see :meth:`HFRollout.generate`)."""
        device = next(policy.parameters()).device
        ids, mask = left_pad(prompts, tokenizer.pad_token_id)  # [B, P]
        ids, mask = ids.to(device), mask.to(device)
        n = 1 if greedy else self.group_size
        eos_ids = eos_ids_of(policy, tokenizer)
        sampling = (
            {} if greedy else {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
        )
        was_training = policy.training
        policy.eval()
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed)
                cache = prefill(policy, ids, mask)
                decoding = contextlib.nullcontext()
                if cache is not None and self.shared_attention and full_attention_only(policy):
                    cache = SharedPrefixCache(cache, n)
                    decoding = shared_prefix_decoding(policy, cache)
                elif cache is not None and n > 1:
                    cache.batch_repeat_interleave(n)  # [B * G, h, P - 1, d] per layer
                with decoding:
                    out = policy.generate(
                        input_ids=ids.repeat_interleave(n, dim=0),  # [N, P]
                        attention_mask=mask.repeat_interleave(n, dim=0),  # [N, P]
                        past_key_values=cache,
                        do_sample=not greedy,
                        max_new_tokens=max_new_tokens or self.max_new_tokens,
                        eos_token_id=eos_ids,
                        pad_token_id=tokenizer.pad_token_id,
                        output_logits=True,
                        return_dict_in_generate=True,
                        use_cache=True,
                        **sampling,
                    )
        finally:
            policy.train(was_training)
        return _to_batch(out, ids, mask, n, eos_ids, 1.0 if greedy else self.temperature, tokenizer)


def _to_batch(out, ids, mask, n: int, eos_ids: list[int], temperature: float, tokenizer) -> RolloutBatch:
    """``generate``'s output -> :class:`RolloutBatch` (masks after EOS, behaviour log-probs, texts)."""
    width = ids.shape[1]
    completion = out.sequences[:, width:]  # [N, C]
    comp_mask = completion_mask_after_eos(completion, eos_ids)  # [N, C]
    logits = torch.stack(out.logits, dim=1).float()  # [N, C, V]
    logp = torch.log_softmax(logits / temperature, dim=-1)  # [N, C, V]
    behaviour_logp = logp.gather(-1, completion.unsqueeze(-1)).squeeze(-1) * comp_mask  # [N, C]
    completion = torch.where(comp_mask.bool(), completion, tokenizer.pad_token_id)  # [N, C]
    return RolloutBatch(
        input_ids=torch.cat([ids.repeat_interleave(n, dim=0), completion], dim=1),  # [N, P + C]
        attention_mask=torch.cat([mask.repeat_interleave(n, dim=0), comp_mask], dim=1),  # [N, P + C]
        completion_mask=comp_mask,
        behaviour_logp=behaviour_logp,
        completions=tokenizer.batch_decode(completion, skip_special_tokens=True),
        prompt_width=width,
        group_size=n,
    )
