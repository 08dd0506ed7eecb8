"""Mask diagnostics: overlap between masks and the share of activation mass a mask covers."""

from __future__ import annotations

from torch import Tensor

from longact_pl.masking.units import count_k


def jaccard(a: Tensor, b: Tensor) -> float:
    """Compute ``|a & b| / |a | b|`` of two bool masks (1.0 when both are empty).

    Args:
        a: Bool mask.  # [rows]
        b: Bool mask.  # [rows]
    """
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def l1_share(mean_abs: Tensor, mask: Tensor) -> float:
    """Fraction of the total mean ``|activation|`` that falls on the kept channels.

    Args:
        mean_abs: Per-channel mean absolute activation.  # [rows]
        mask: Bool mask of kept channels.  # [rows]
    """
    total = float(mean_abs.sum())
    return 0.0 if total == 0.0 else float(mean_abs[mask].sum()) / total


def top_share(mean_abs: Tensor, ratio: float) -> float:
    """Measure concentration: the L1 share of the top ``count_k(ratio, C)`` channels.

    Args:
        mean_abs: Per-channel mean absolute activation.  # [C]
        ratio: Fraction of channels in ``(0, 1]``.
    """
    k = count_k(ratio, mean_abs.numel())
    total = float(mean_abs.sum())
    return 0.0 if total == 0.0 else float(mean_abs.topk(k).values.sum()) / total
