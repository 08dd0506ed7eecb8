"""Rollouts with Hugging Face ``generate`` (works everywhere, including a laptop CPU)."""

from __future__ import annotations

import torch

from longact_pl.rollout.masks import check_sampling, completion_mask_after_eos, left_pad
from longact_pl.rollout.types import RolloutBatch


class HFRollout:
    """Sample G completions per prompt with ``model.generate``.

    Behaviour log-probs come from the raw logits ``generate`` returns (``output_logits``), divided by
    the sampling temperature, so no extra forward pass is needed.

    Args:
        group_size: G, completions per prompt (>= 2 for group-relative advantages).
        max_new_tokens: Generation budget per completion.
        temperature: Sampling temperature (> 0).
        top_p: Nucleus sampling mass in (0, 1].
        top_k: Top-k filter (0 = off).
    """

    def __init__(
        self,
        group_size: int = 4,
        max_new_tokens: int = 40,
        temperature: float = 0.7,
        top_p: float = 1.0,
        top_k: int = 0,
    ) -> None:
        check_sampling(group_size, max_new_tokens, temperature, top_p)
        self.group_size = group_size
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k

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
        """Sample completions.

        Args:
            policy: The causal LM.
            tokenizer: Its tokenizer (pad and EOS ids, decoding).
            prompts: B prompt token id lists.
            greedy: Greedy decoding, one completion per prompt (validation).
            seed: Seeds the sampler; the same seed and weights give the same samples.
            max_new_tokens: Override of the generation budget.

        Returns:
            A :class:`RolloutBatch` with ``B * G`` rows (``B`` when greedy).
        """
        device = next(policy.parameters()).device
        ids, mask = left_pad(prompts, tokenizer.pad_token_id)  # [B, P]
        ids, mask = ids.to(device), mask.to(device)
        n = 1 if greedy else self.group_size
        eos = policy.generation_config.eos_token_id
        eos_ids = (
            list(eos)
            if isinstance(eos, (list, tuple))
            else [eos if eos is not None else tokenizer.eos_token_id]
        )
        sampling = (
            {} if greedy else {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
        )
        was_training = policy.training
        policy.eval()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            out = policy.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=not greedy,
                num_return_sequences=n,
                max_new_tokens=max_new_tokens or self.max_new_tokens,
                eos_token_id=eos_ids,
                pad_token_id=tokenizer.pad_token_id,
                output_logits=True,
                return_dict_in_generate=True,
                use_cache=True,
                **sampling,
            )
        policy.train(was_training)
        width = ids.shape[1]
        completion = out.sequences[:, width:]  # [N, C]
        comp_mask = completion_mask_after_eos(completion, eos_ids)  # [N, C]
        logits = torch.stack(out.logits, dim=1).float()  # [N, C, V]
        temperature = 1.0 if greedy else self.temperature
        logp = torch.log_softmax(logits / temperature, dim=-1)  # [N, C, V]
        behaviour_logp = logp.gather(-1, completion.unsqueeze(-1)).squeeze(-1) * comp_mask  # [N, C]
        prompt_mask = mask.repeat_interleave(n, dim=0)  # [N, P]
        completion = torch.where(comp_mask.bool(), completion, tokenizer.pad_token_id)  # [N, C]
        texts = tokenizer.batch_decode(completion, skip_special_tokens=True)
        return RolloutBatch(
            input_ids=torch.cat([ids.repeat_interleave(n, dim=0), completion], dim=1),  # [N, P + C]
            attention_mask=torch.cat([prompt_mask, comp_mask], dim=1),  # [N, P + C]
            completion_mask=comp_mask,
            behaviour_logp=behaviour_logp,
            completions=texts,
            prompt_width=width,
            group_size=n,
        )
