"""Drawing the next token from a step's logits (the lean decode loop's sampler; pure functions).

The distribution is Hugging Face ``generate``'s: the raw logits in fp32, divided by the temperature, then
top-k and top-p filtered by HF's own warpers (``TopKLogitsWarper``, ``TopPLogitsWarper``), softmax. Two ways
to draw from it:

* ``multinomial``: ``torch.multinomial(probs, 1)``, what ``generate`` calls, so the same seed gives the same
  tokens as ``generate``. On a CPU it draws one exponential variate per vocabulary entry and row
  (``argmax(probs / Exp(1))``): 8 rows of a 49k vocabulary take ~6 ms, longer than the rest of a decode
  step of a small model.
* ``inverse_cdf``: one uniform variate per row, looked up in the cumulative distribution
  (:func:`inverse_cdf`). The whole sampling step (log-prob included) takes ~0.5 ms for the same rows
  against ~8 ms with ``multinomial`` (one CPU thread).
  The same distribution and the same seeding contract (the process generator, seeded by the engine: a seed
  gives the same tokens), but not ``multinomial``'s draws: the two consume the generator differently (V
  exponentials against one uniform per row), so no transformation of one stream reproduces the other.

Greedy decoding takes the argmax of the raw logits (``generate``'s greedy search without processors).
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig, TopKLogitsWarper, TopPLogitsWarper

SAMPLERS = ("inverse_cdf", "multinomial")

# generation-config fields that make ``generate`` add a logits processor or stopping rule this sampler does
# not implement, with the values that leave them off; a model setting any of them decodes with ``generate``
_OFF: dict[str, tuple] = {
    "repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None, []),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "sequence_bias": (None, {}),
    "suppress_tokens": (None, []),
    "begin_suppress_tokens": (None, []),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "exponential_decay_length_penalty": (None,),
    "remove_invalid_values": (None, False),
    "top_h": (None,),
    "min_p": (None,),
    "typical_p": (None, 1.0),
    "epsilon_cutoff": (None, 0.0),
    "eta_cutoff": (None, 0.0),
    "watermarking_config": (None,),
    "renormalize_logits": (None, False),
    "guidance_scale": (None, 1.0),
    "stop_strings": (None, []),
    "max_time": (None,),
}


def unsupported_settings(config: GenerationConfig | None) -> list[str]:
    """Names of the generation-config settings in use that :class:`TokenSampler` does not apply.

    ``generate`` merges a model's ``generation_config`` into every call (e.g. a checkpoint's
    ``repetition_penalty``); the lean loop applies only temperature, top-k and top-p, so for such a model
    the engine keeps ``generate``.
    """
    if config is None:
        return []
    return [name for name, off in _OFF.items() if getattr(config, name, None) not in off]


class TokenSampler:
    """Next token and its behaviour log-prob from one step's raw logits.

    Args:
        temperature: Sampling temperature; the behaviour log-prob is taken at it (1.0 when greedy).
        top_k: Top-k filter (0 = off).
        top_p: Nucleus mass (1.0 = off).
        method: ``inverse_cdf`` or ``multinomial`` (module docstring).
        greedy: Argmax instead of sampling.
    """

    def __init__(
        self, temperature: float, top_k: int, top_p: float, method: str = "inverse_cdf", greedy: bool = False
    ) -> None:
        if method not in SAMPLERS:
            raise ValueError(f"rollout.sampler must be one of {', '.join(SAMPLERS)}, got {method!r}")
        self.greedy, self.method = greedy, method
        self.temperature = 1.0 if greedy else temperature
        self.warpers = []
        self._work: list[torch.Tensor] | None = None  # [N, V] fp32 buffers, reused across steps
        if not greedy and top_k:
            self.warpers.append(TopKLogitsWarper(top_k=top_k))
        if not greedy and top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p=top_p))

    def __call__(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw one token per row.

        The ``[N, V]`` intermediates live in two buffers reused from step to step: on CPUs a fresh
        allocation of that size costs more in page faults than the arithmetic on it.

        Args:
            logits: ``[N, V]`` raw logits of the next position.

        Returns:
            ``(tokens [N] long, logp [N] fp32)``: the drawn tokens and their log-probs under the softmax of
            the logits at the temperature (unfiltered: the trainer's log-probs are the full softmax).
        """
        if self._work is None or self._work[0].shape != logits.shape or self._work[0].device != logits.device:
            self._work = [torch.empty(logits.shape, dtype=torch.float32, device=logits.device) for _ in "ab"]
        scaled = self._work[0].copy_(logits).div_(self.temperature)  # [N, V]; generate's fp32 logits / T
        top = scaled.amax(-1, keepdim=True)  # [N, 1]
        weights = torch.sub(scaled, top, out=self._work[1]).exp_()  # [N, V]: the softmax, unnormalised
        log_total = weights.sum(-1, keepdim=True).log_()  # [N, 1]
        if self.greedy:
            tokens = scaled.argmax(-1)  # [N]
        elif self.method == "inverse_cdf" and not self.warpers:
            tokens = inverse_cdf(weights)  # [N]
        else:
            scores = scaled
            for warp in self.warpers:
                scores = warp(None, scores)  # [N, V]; -inf outside the top-k / nucleus
            probs = torch.softmax(scores, dim=-1)  # [N, V]
            tokens = (
                torch.multinomial(probs, 1).squeeze(1) if self.method == "multinomial" else inverse_cdf(probs)
            )  # [N]
        logp = scaled.gather(-1, tokens.unsqueeze(-1)) - top - log_total  # [N, 1]: log_softmax at the token
        return tokens, logp.squeeze(-1)


BLOCK = 256  # vocabulary entries per block of the two-level cumulative distribution


def inverse_cdf(weights: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """One draw per row, proportional to ``weights`` (``[N, V]``, >= 0), from one uniform variate each.

    Token ``i`` is drawn when the uniform falls in ``[cdf[i-1], cdf[i])``, an interval of width ``w_i``; a
    token of weight 0 has an empty interval and is never drawn. The lookup is two-level (a full-vocabulary
    float64 cumsum is a slow sequential scan on CPUs): the uniform picks a block of ``block`` entries by the
    blocks' cumulative masses (fp32 block sums, float64 cumsum), then a token inside the block (float64
    cumsum), so each token's probability is exact up to the fp32 rounding of its block's sum (~1e-7).

    Returns:
        ``[N]`` long token ids.
    """
    rows, vocab = weights.shape
    full = vocab - vocab % block
    masses = weights[:, :full].view(rows, -1, block).sum(-1)  # [N, V // block]
    if full < vocab:
        masses = torch.cat([masses, weights[:, full:].sum(-1, keepdim=True)], -1)  # [N, ceil(V / block)]
    outer = masses.double().cumsum(-1)  # [N, K]
    u = (
        torch.rand(rows, 1, dtype=torch.float64, device=weights.device) * outer[:, -1:]
    )  # [N, 1] in [0, total)
    chosen = _first_above(outer, u)  # [N, 1]: the block holding u
    below = torch.where(chosen > 0, outer.gather(-1, (chosen - 1).clamp(min=0)), 0.0)  # [N, 1]
    columns = chosen * block + torch.arange(block, device=weights.device)  # [N, block]
    inner = weights.gather(-1, columns.clamp(max=vocab - 1)).double()  # [N, block]
    inner = inner.masked_fill(columns >= vocab, 0.0).cumsum(-1)  # [N, block]
    return (chosen * block + _first_above(inner, u - below)).squeeze(1)  # [N]


def _first_above(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index of the first entry of each row of ``cdf`` (``[N, K]``, non-decreasing) above ``u`` (``[N, 1]``).

    Rounding can put ``u`` at or past the row's last value; the index then stays on the last entry where
    the row still rises (an entry of positive mass).
    """
    index = torch.searchsorted(cdf, u, right=True)  # [N, 1]
    last = (cdf < cdf[:, -1:]).sum(-1, keepdim=True)  # [N, 1]: the row reaches its total there
    return torch.minimum(index, last)  # [N, 1]
