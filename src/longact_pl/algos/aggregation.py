"""Loss aggregation over tokens and sequences (GRPO, DAPO, Dr. GRPO), micro-batch safe.

Every aggregation takes optional global denominators so that, when a mini-batch is split into
micro-batches whose losses are summed (gradient accumulation), the sum equals the loss of the whole
mini-batch. Padded positions are ignored even if they hold inf or NaN, and a sequence without valid
tokens contributes 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Number = int | float | torch.Tensor


def _masked_sums(loss: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sums of the valid-token losses and valid-token counts.

    Args:
        loss: ``[N, T]`` per-token loss.
        mask: ``[N, T]`` float or bool (1 = real completion token).

    Returns:
        ``(sums [N], counts [N])``.
    """
    keep = mask.bool()  # [N, T]
    sums = torch.where(keep, loss, torch.zeros_like(loss)).sum(dim=-1)  # [N]
    counts = keep.sum(dim=-1).to(loss.dtype)  # [N]
    return sums, counts


def _denominator(value: Number | None, local: Number, like: torch.Tensor) -> torch.Tensor:
    """``value`` (or the local count when None) as a scalar tensor on ``like``'s device, at least 1."""
    chosen = local if value is None else value
    return torch.as_tensor(chosen, dtype=like.dtype, device=like.device).clamp(min=1)  # []


def seq_mean_token_mean(
    loss: torch.Tensor, mask: torch.Tensor, num_seqs: Number | None = None
) -> torch.Tensor:
    """GRPO: mean over each sequence's valid tokens, then mean over sequences.

    Args:
        loss: ``[N, T]`` per-token loss.
        mask: ``[N, T]`` float or bool (1 = real completion token).
        num_seqs: Sequences in the whole mini-batch (default: ``N``).

    Returns:
        Scalar loss.
    """
    sums, counts = _masked_sums(loss, mask)  # [N], [N]
    per_seq = sums / counts.clamp(min=1)  # [N]
    return per_seq.sum() / _denominator(num_seqs, loss.shape[0], loss)  # []


def token_mean(loss: torch.Tensor, mask: torch.Tensor, num_tokens: Number | None = None) -> torch.Tensor:
    """DAPO: sum over every valid token of the batch divided by the number of valid tokens.

    Args:
        loss: ``[N, T]`` per-token loss.
        mask: ``[N, T]`` float or bool (1 = real completion token).
        num_tokens: Valid tokens in the whole mini-batch (default: this batch's count).

    Returns:
        Scalar loss.
    """
    sums, counts = _masked_sums(loss, mask)  # [N], [N]
    return sums.sum() / _denominator(num_tokens, counts.sum(), loss)  # []


def seq_mean_token_sum_norm(
    loss: torch.Tensor, mask: torch.Tensor, max_len: int, num_seqs: Number | None = None
) -> torch.Tensor:
    """Dr. GRPO: per-sequence token sum divided by the fixed ``max_len``, then mean over sequences.

    Args:
        loss: ``[N, T]`` per-token loss.
        mask: ``[N, T]`` float or bool (1 = real completion token).
        max_len: Constant normaliser (the generation budget), independent of the actual lengths.
        num_seqs: Sequences in the whole mini-batch (default: ``N``).

    Returns:
        Scalar loss.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    sums, _ = _masked_sums(loss, mask)  # [N]
    return (sums / max_len).sum() / _denominator(num_seqs, loss.shape[0], loss)  # []


AggregationFn = Callable[[torch.Tensor, torch.Tensor, int | None, Number | None, Number | None], torch.Tensor]

# name -> (loss [N, T], mask [N, T], max_len, num_seqs, num_tokens) -> scalar
AGGREGATIONS: dict[str, AggregationFn] = {
    "seq_mean_token_mean": lambda loss, mask, max_len, num_seqs, num_tokens: seq_mean_token_mean(
        loss, mask, num_seqs
    ),
    "token_mean": lambda loss, mask, max_len, num_seqs, num_tokens: token_mean(loss, mask, num_tokens),
    "seq_mean_token_sum_norm": lambda loss, mask, max_len, num_seqs, num_tokens: seq_mean_token_sum_norm(
        loss, mask, max_len, num_seqs
    ),
}

# aggregations that need a fixed ``max_len``
NEEDS_MAX_LEN: frozenset[str] = frozenset({"seq_mean_token_sum_norm"})


def aggregate(
    loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    max_len: int | None = None,
    num_seqs: Number | None = None,
    num_tokens: Number | None = None,
) -> torch.Tensor:
    """Aggregate a per-token loss with the named mode (see ``AGGREGATIONS``).

    Args:
        loss: ``[N, T]`` per-token loss.
        mask: ``[N, T]`` float or bool (1 = real completion token).
        mode: One of ``AGGREGATIONS``.
        max_len: Fixed normaliser, required by ``seq_mean_token_sum_norm``.
        num_seqs: Sequences in the whole mini-batch (default: local).
        num_tokens: Valid tokens in the whole mini-batch (default: local).

    Returns:
        Scalar loss.

    Raises:
        ValueError: Unknown ``mode`` or missing ``max_len``.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; allowed: {sorted(AGGREGATIONS)}")
    if mode in NEEDS_MAX_LEN and max_len is None:
        raise ValueError(f"aggregation {mode!r} needs max_len")
    return AGGREGATIONS[mode](loss, mask, max_len, num_seqs, num_tokens)  # []
