"""Rollouts with Hugging Face models (works everywhere, including a laptop CPU).

``generate(num_return_sequences=G)`` repeats every prompt G times before the prefill, so a long prompt is
encoded G times and G copies of its key/values live through decoding. With ``prefill_once`` the B
left-padded prompts are prefilled once per group:

* ``decode="lean"`` (default) with ``shared_attention`` on a full-attention model whose generation config
  asks for nothing beyond temperature / top-k / top-p: our own loop
  (:func:`longact_pl.rollout.shared_decode.decode`): one copy of the prompt's key/values, a preallocated
  completion cache, no per-step mask or kept logits, tokens drawn by ``sampler`` (``inverse_cdf``: the same
  distribution as ``generate``, not its draws; ``multinomial``: ``generate``'s draws);
* otherwise ``generate`` continues from the prefilled cache (all but the last prompt token), with the same
  logits processors and the same random-number consumption as without ``prefill_once``, so a seed gives the
  same samples either way (up to floating-point ties). With ``shared_attention`` the prompt key/values stay
  single (:func:`longact_pl.rollout.prefix_generate.shared_prefix_attention`); without it, or for
  sliding-window / hybrid models, the cache is repeated G times and the model's own attention runs.
"""

from __future__ import annotations

import contextlib
import threading

import torch

from longact_pl.ops.shared_prefix import full_attention_only
from longact_pl.rollout.async_loop import AsyncSettings
from longact_pl.rollout.batch_builder import build_batch, check_sampling, eos_token_ids, left_pad
from longact_pl.rollout.prefix_generate import SharedPrefixCache, prefill, shared_prefix_decoding
from longact_pl.rollout.shared_decode import decode
from longact_pl.rollout.token_sampling import SAMPLERS, TokenSampler, unsupported_settings
from longact_pl.rollout.types import RolloutBatch

# generate seeds the process-wide CPU generator: one sampling at a time (async rollouts sample in a thread)
_GENERATOR_LOCK = threading.Lock()


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
        prefill_once: Prefill each prompt once per group instead of once per sample (``rollout=hf_shared``).
        shared_attention: With ``prefill_once``, keep one copy of each prompt's key/values while decoding
            (full-attention models; sliding-window or hybrid ones repeat the cache G times instead).
        decode: With ``prefill_once`` and ``shared_attention``: ``lean`` = our own decode loop where it
            applies (module docstring), ``generate`` = Hugging Face ``generate`` over the shared cache.
        sampler: How the lean loop draws a token: ``inverse_cdf`` (one uniform per row) or
            ``multinomial`` (``generate``'s draws); ``generate`` itself always draws with ``multinomial``.
        mode, max_staleness, round_tokens, placement, engine_device: Asynchronous rollouts (see
            :class:`~longact_pl.rollout.async_loop.AsyncSettings`); in ``async`` mode a copy of the policy
            samples, so the engine counts as external (its log-probs lag the trainer's).
    """

    # the policy samples itself: no engine holds a copy of the weights
    external = False

    def __init__(
        self,
        group_size: int = 4,
        max_new_tokens: int = 40,
        temperature: float = 0.7,
        top_p: float = 1.0,
        top_k: int = 0,
        prefill_once: bool = False,
        shared_attention: bool = True,
        decode: str = "lean",
        sampler: str = "inverse_cdf",
        mode: str = "sync",
        max_staleness: int = 1,
        round_tokens: int | None = None,
        placement: str = "colocated",
        engine_device: str | None = None,
    ) -> None:
        check_sampling(group_size, max_new_tokens, temperature, top_p, top_k)
        if decode not in ("lean", "generate"):
            raise ValueError(f"rollout.decode must be lean or generate, got {decode!r}")
        if sampler not in SAMPLERS:
            raise ValueError(f"rollout.sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        self.schedule = AsyncSettings(mode, max_staleness, round_tokens, placement, engine_device)
        # async: a sampler copy one or more versions behind the trainer (a subclass may be external anyway)
        self.external = type(self).external or self.schedule.is_async
        self.group_size = group_size
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.prefill_once = prefill_once
        self.shared_attention = shared_attention
        self.decode = decode
        self.sampler = sampler

    def lean_decoding(self, policy: torch.nn.Module) -> bool:
        """Whether :meth:`generate` runs our own decode loop for ``policy`` (else ``generate``)."""
        return (
            self.prefill_once
            and self.shared_attention
            and self.decode == "lean"
            and full_attention_only(policy)
            and not unsupported_settings(getattr(policy, "generation_config", None))
        )

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
        eos_ids = eos_token_ids(policy, tokenizer)
        budget = max_new_tokens or self.max_new_tokens
        was_training = policy.training
        policy.eval()
        try:
            with _GENERATOR_LOCK, torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed)
                if self.lean_decoding(policy):
                    draw = TokenSampler(self.temperature, self.top_k, self.top_p, self.sampler, greedy)
                    completion, behaviour = decode(
                        policy, ids, mask, n, budget, draw, eos_ids, tokenizer.pad_token_id
                    )  # [N, T], [N, T]
                else:
                    completion, behaviour = self._hf_generate(
                        policy, ids, mask, n, budget, greedy, eos_ids, tokenizer.pad_token_id
                    )
        finally:
            policy.train(was_training)
        return build_batch(ids, mask, completion, behaviour, n, eos_ids, tokenizer)

    def _hf_generate(
        self,
        policy: torch.nn.Module,
        ids: torch.Tensor,
        mask: torch.Tensor,
        n: int,
        budget: int,
        greedy: bool,
        eos_ids: list[int],
        pad_id: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``generate`` (a shared prefill first with ``prefill_once``): ``(completion, logp)``, ``[N, T]``."""
        sampling = (
            {} if greedy else {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
        )
        cache = prefill(policy, ids, mask) if self.prefill_once else None
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
                max_new_tokens=budget,
                eos_token_id=eos_ids,
                pad_token_id=pad_id,
                output_logits=True,
                return_dict_in_generate=True,
                use_cache=True,
                **sampling,
            )
        completion = out.sequences[:, ids.shape[1] :]  # [N, T]
        logits = torch.stack(out.logits, dim=1).float()  # [N, T, V]
        logp = torch.log_softmax(logits / (1.0 if greedy else self.temperature), dim=-1)  # [N, T, V]
        return completion, logp.gather(-1, completion.unsqueeze(-1)).squeeze(-1)  # [N, T]
