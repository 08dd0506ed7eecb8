"""Per-token log-probs of completions under a causal LM, without materialising prompt logits."""

from __future__ import annotations

import torch

from longact_pl.ops.positions import position_ids_from_mask


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-prob of each target token.

    Args:
        logits: ``[n, C, V]`` next-token logits.
        targets: ``[n, C]`` token ids.
        temperature: Logits are divided by it (matching the sampling distribution).

    Returns:
        ``[n, C]`` float32 log-probs.
    """
    logits = logits.float() / temperature  # [n, C, V]
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [n, C]
    return picked - torch.logsumexp(logits, dim=-1)  # [n, C]


def token_entropy(logits: torch.Tensor, temperature: float = 1.0, grad: bool = False) -> torch.Tensor:
    """Entropy of the next-token distribution, ``[n, C, V] -> [n, C]``.

    Without gradient by default (a metric); ``grad=True`` keeps the graph (the entropy bonus).
    """
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # [n, C, V]
        return -(logp.exp() * logp).sum(-1)  # [n, C]


def completion_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_width: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and optionally entropy) of the last ``completion_width`` tokens of each row.

    Only the logits that predict completion tokens are computed (``logits_to_keep``), so memory does
    not grow with the prompt length times the vocabulary.

    Args:
        model: A Hugging Face causal LM.
        input_ids: ``[n, P + C]`` left-padded prompt followed by the completion.
        attention_mask: ``[n, P + C]``.
        completion_width: C.
        temperature: Sampling temperature the completions were drawn at.
        with_entropy: Also return the per-token entropy.
        entropy_grad: The entropy keeps its gradient (entropy bonus); else it is a detached metric.

    Returns:
        ``(logp [n, C], entropy [n, C] or None)``.
    """
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),  # [n, P + C]
        logits_to_keep=completion_width + 1,
        use_cache=False,
    )
    logits = out.logits[:, :-1]  # [n, C, V]: position t predicts token t + 1
    targets = input_ids[:, -completion_width:]  # [n, C]
    logp = token_logprobs(logits, targets, temperature)  # [n, C]
    entropy = token_entropy(logits, temperature, entropy_grad) if with_entropy else None  # [n, C]
    return logp, entropy
