"""Completion log-probs from hidden states, chunk by chunk, without materialising ``[N, C, V]`` logits.

The LM head is applied to a chunk of positions at a time under ``torch.utils.checkpoint`` (non-reentrant),
so the forward keeps only the chunk's hidden states and the backward recomputes the chunk's logits. Peak
memory of the head is ``chunk_size x V`` instead of ``N x C x V`` (several float copies of it, in fact:
the logits, their float32 upcast, the softmax for the backward and the gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from longact_pl.ops.head_blocks import rows_per_block
from longact_pl.ops.positions import position_ids_from_mask

# Config fields of models whose logits are not just ``hidden @ W.T + b`` (not supported by the chunked head).
_SCALED_HEAD_FIELDS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)


def decoder_of(model: nn.Module) -> nn.Module:
    """The base transformer of a Hugging Face causal LM (``model.model`` for Llama / Qwen3).

    Its output ``last_hidden_state`` already has the final norm applied, so the LM head is all that is
    left to turn it into logits.

    Raises:
        ValueError: If the model has no recognisable base model.
    """
    base = getattr(model, "model", None)
    if isinstance(base, nn.Module):
        return base
    if hasattr(model, "get_decoder"):
        return model.get_decoder()
    raise ValueError(f"cannot find the base model of {type(model).__name__}")


def lm_head_of(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight ``[V, H]`` and bias ``[V]`` (or ``None``) of the output embedding.

    Raises:
        NotImplementedError: For heads that are not a plain linear map (e.g. logit soft-capping).
    """
    config = getattr(model, "config", None)
    text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    for name in _SCALED_HEAD_FIELDS:
        if getattr(text, name, None) not in (None, 1, 1.0):
            raise NotImplementedError(f"LM heads with `{name}` are not supported by the chunked head")
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise NotImplementedError(f"the output embedding is a {type(head).__name__}, not nn.Linear")
    return head.weight, head.bias


class _TargetLogSoftmax(torch.autograd.Function):
    """``logits [t, V]`` -> float32 log-probs ``[t]`` of ``targets`` at ``temperature`` (and the entropy).

    Values: ``log_softmax(logits.float() / temperature)`` gathered at the targets, and
    ``-(p * log p).sum(-1)`` (a detached metric). The backward is one pass from the saved softmax ``p``:
    ``d logp / d logits = (onehot - p) / temperature``, instead of autograd's chain (a zero-filled
    ``[t, V]`` gradient scattered at the targets, ``log_softmax``'s backward, the temperature's, the cast's):
    on CPU these float32 passes over ``[t, V]`` cost the head more than its matmul.

    The forward runs a few rows at a time (:func:`~longact_pl.ops.head_blocks.rows_per_block`; every op is
    row-wise, so the values are those of the whole-tensor ops, bit for bit) and writes only the softmax it
    keeps; the backward turns that softmax into the gradient in place. On CPU a fresh ``[t, V]`` float32
    tensor costs more in page faults (glibc maps every allocation over 32 MiB anew) than the pass filling it.
    """

    @staticmethod
    def forward(ctx, logits, targets, temperature, with_entropy):  # noqa: D102
        rows, vocab = logits.shape
        keep = ctx.needs_input_grad[0]  # else (a no-grad pass) nothing is kept
        kept = logits.new_empty(rows, vocab, dtype=torch.float32) if keep else None  # [t, V]: p
        logp = logits.new_empty(rows, dtype=torch.float32)  # [t]
        entropy = logits.new_empty(rows, dtype=torch.float32) if with_entropy else None  # [t]
        step = rows_per_block(vocab, logits.device.type)
        for start in range(0, rows, step):
            block = slice(start, start + step)
            z = logits[block]  # [b, V]
            if z.dtype != torch.float32:  # the upcast's own buffer, divided in place (the values of `/`)
                z = z.float()  # [b, V]
                z = z.div_(temperature) if temperature != 1.0 else z
            elif temperature != 1.0:  # the input stays untouched
                z = z / temperature  # [b, V]
            full = torch.log_softmax(z, dim=-1)  # [b, V]
            logp[block] = full.gather(-1, targets[block].unsqueeze(-1)).squeeze(-1)  # [b]
            if keep or with_entropy:
                p = torch.exp(full, out=kept[block]) if keep else full.exp()  # [b, V]
                if with_entropy:
                    entropy[block] = -(p * full).sum(-1)  # [b]
        if keep:
            ctx.save_for_backward(kept, targets)  # [t, V], [t]
        ctx.temperature, ctx.dtype = temperature, logits.dtype
        if entropy is not None:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):  # noqa: D102
        p, targets = ctx.saved_tensors  # [t, V] float32, [t]
        scale = (grad_logp.float() / ctx.temperature).unsqueeze(-1)  # [t, 1]
        # in the saved softmax's buffer: a second backward fails autograd's version check
        grad = p.mul_(scale.neg())  # [t, V]: -p * s
        grad.scatter_add_(-1, targets.unsqueeze(-1), scale)  # [t, V]: + onehot * s
        return grad.to(ctx.dtype), None, None, None


def _chunk_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float,
    entropy_sink: dict[int, torch.Tensor] | None = None,
    key: int = 0,
    entropy_grad: bool = False,
) -> torch.Tensor:
    """``hidden [t, H]``, ``targets [t]`` -> log-probs ``[t]``; stores the entropy in ``entropy_sink[key]``.

    The sink is a plain dict (not a tensor argument) so a checkpoint replay can overwrite it harmlessly.
    With ``entropy_grad`` the stored entropy keeps its graph (its backward replays the chunk too).
    """
    logits = F.linear(hidden, weight, bias)  # [t, V]
    if not entropy_grad:  # the entropy is a metric: one pass forward, one backward (_TargetLogSoftmax)
        logp, entropy = _TargetLogSoftmax.apply(logits, targets, temperature, entropy_sink is not None)
        if entropy_sink is not None:
            entropy_sink[key] = entropy  # [t]
        return logp  # [t]
    logits = logits.float()  # [t, V]
    if temperature != 1.0:  # in place: a fresh buffer no backward needs (same values as `/`)
        logits = logits.div_(temperature)  # [t, V]
    full = torch.log_softmax(logits, dim=-1)  # [t, V]
    logp = full.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [t]
    if entropy_sink is not None:  # last, so the backward's early-stopping recompute skips it
        entropy_sink[key] = -(full.exp() * full).sum(-1)  # [t], with its graph (entropy bonus)
    return logp


def head_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_size: int | None = None,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and entropy) of ``targets`` under ``softmax(hidden @ W.T + b)``.

    Args:
        hidden: ``[n, C, H]`` final (normed) hidden states; position ``t`` predicts ``targets[:, t]``.
        weight: ``[V, H]`` LM head weight.
        bias: ``[V]`` LM head bias or ``None``.
        targets: ``[n, C]`` token ids.
        temperature: Logits are divided by it.
        with_entropy: Also return the per-token entropy.
        chunk_size: Tokens (rows x positions, flattened) per chunk; each chunk's head runs under
            non-reentrant checkpointing when gradients are needed. ``None`` (or ``>= n * C``) computes
            everything at once, like :func:`longact_pl.ops.logprobs.completion_logprobs`.
        entropy_grad: The entropy keeps its gradient (entropy bonus); else it is a detached metric.

    Returns:
        ``(logp [n, C] float32, entropy [n, C] float32 or None)``.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    n, width, size = hidden.shape
    flat = hidden.reshape(n * width, size)  # [n * C, H]
    flat_targets = targets.reshape(n * width)  # [n * C]
    sink: dict[int, torch.Tensor] | None = {} if with_entropy else None
    step = n * width if chunk_size is None else min(chunk_size, n * width)
    grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    parts = []
    for start in range(0, n * width, max(step, 1)):
        stop = min(start + step, n * width)
        args = (
            flat[start:stop],
            weight,
            bias,
            flat_targets[start:stop],
            temperature,
            sink,
            start,
            entropy_grad,
        )
        if grad and step < n * width:
            parts.append(checkpoint(_chunk_logprobs, *args, use_reentrant=False))  # [t]
        else:
            parts.append(_chunk_logprobs(*args))  # [t]
    logp = torch.cat(parts).view(n, width)  # [n, C]
    entropy = (
        torch.cat([sink[k] for k in sorted(sink)]).view(n, width) if sink is not None else None
    )  # [n, C]
    return logp, entropy


def chunked_completion_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_width: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_size: int | None = 1024,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Drop-in for :func:`longact_pl.ops.logprobs.completion_logprobs` with a chunked LM head.

    Runs the base model (``model.model``) for hidden states, then :func:`head_logprobs` on the positions
    that predict completion tokens.

    Args:
        model: A Hugging Face causal LM whose head is a plain ``nn.Linear`` (Llama, Qwen3, ...).
        input_ids: ``[n, P + C]`` left-padded prompt followed by the completion.
        attention_mask: ``[n, P + C]``.
        completion_width: C.
        temperature: Sampling temperature the completions were drawn at.
        with_entropy: Also return the per-token entropy.
        chunk_size: Tokens per head chunk (``None`` = one chunk).
        entropy_grad: The entropy keeps its gradient (entropy bonus).

    Returns:
        ``(logp [n, C], entropy [n, C] or None)``.
    """
    out = decoder_of(model)(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),  # [n, P + C]
        use_cache=False,
    )
    hidden = out.last_hidden_state[:, -completion_width - 1 : -1]  # [n, C, H]: position t predicts t + 1
    weight, bias = lm_head_of(model)
    targets = input_ids[:, -completion_width:]  # [n, C]
    return head_logprobs(hidden, weight, bias, targets, temperature, with_entropy, chunk_size, entropy_grad)
