"""Mask diagnostics: overlap between masks and the share of activation mass a mask covers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from longact_pl.masking.targets import Target
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


def mean(values: Sequence[float]) -> float:
    """Plain mean (0 for no values)."""
    return sum(values) / max(len(values), 1)


def drift_metrics(
    targets: Sequence[Target], old: Mapping[str, Tensor], new: Mapping[str, Tensor], l1: Mapping[str, Tensor]
) -> dict[str, float]:
    """What a refresh changed: Jaccard with the previous masks and L1 share, per target group and overall.

    Args:
        targets: The targets (their ``group`` names the per-group metrics).
        old: Target name -> previous row mask.
        new: Target name -> new row mask.
        l1: Target name -> mean ``|activation|`` per channel.

    Returns:
        ``mask/jaccard[_<group>]``, ``mask/l1_share[_<group>]`` and ``mask/entered_rows`` (rows newly kept).
    """
    per_group: dict[str, tuple[list[float], list[float]]] = {}
    for t in targets:
        jac, share = per_group.setdefault(t.group, ([], []))
        jac.append(jaccard(old[t.name], new[t.name]))
        share.append(l1_share(l1[t.name], new[t.name]))
    out = {}
    for group, (jac, share) in per_group.items():
        out[f"mask/jaccard_{group}"] = mean(jac)
        out[f"mask/l1_share_{group}"] = mean(share)
    out["mask/jaccard"] = mean([v for g in per_group.values() for v in g[0]])
    out["mask/l1_share"] = mean([v for g in per_group.values() for v in g[1]])
    out["mask/entered_rows"] = float(sum(int((new[t.name] & ~old[t.name]).sum()) for t in targets))
    return out
