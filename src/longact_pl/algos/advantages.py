"""Group-relative advantage estimators (``algo.advantage._target_``) and the dynamic-sampling filter.

An estimator maps ``[N]`` rewards (consecutive ``G`` rows one group) to ``[N]`` advantages
(:class:`AdvantageEstimator`); a new one is a new class plus a preset naming it (``docs/extending.md``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class AdvantageEstimator(Protocol):
    """Per-sequence advantages from the rewards of whole groups."""

    def __call__(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        """``[N] -> [N]``: consecutive ``group_size`` rows of ``rewards`` form one group."""
        ...


class GroupNormalized:
    """GRPO (Shao et al., 2024): ``(r - mean_g) / (std_g + eps)`` (Bessel-corrected std), 0 for equal groups.

    Args:
        eps: Added to the group's standard deviation.
    """

    def __init__(self, eps: float = 1e-6) -> None:
        self.eps = float(eps)

    def __call__(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        """See :class:`AdvantageEstimator`."""
        return group_advantages(rewards, group_size, scale_by_std=True, eps=self.eps)  # [N]

    def __repr__(self) -> str:
        """Readable summary for logs."""
        return f"GroupNormalized(eps={self.eps:g})"


class GroupCentered:
    """Dr. GRPO (Liu et al., 2025): ``r - mean_g``, not divided by the group's std (0 for equal groups)."""

    def __call__(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        """See :class:`AdvantageEstimator`."""
        return group_advantages(rewards, group_size, scale_by_std=False)  # [N]

    def __repr__(self) -> str:
        """Readable summary for logs."""
        return "GroupCentered()"


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Reshape ``[N]`` rewards into ``[N / G, G]`` groups, validating the shapes.

    Args:
        rewards: ``[N]`` rewards; consecutive ``group_size`` rows form one group.
        group_size: G, completions per prompt.

    Returns:
        ``[N / G, G]`` floating-point view of the rewards.

    Raises:
        ValueError: If ``rewards`` is not 1-D, ``group_size < 2`` or ``N`` is not a multiple of
            ``group_size``.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for group-relative advantages, got {group_size}")
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"number of rewards ({rewards.numel()}) must be a multiple of group_size ({group_size})"
        )
    values = rewards if rewards.is_floating_point() else rewards.float()  # [N]
    return values.view(-1, group_size)  # [B, G]


def _uniform(groups: torch.Tensor) -> torch.Tensor:
    """``[B, G] -> bool [B]``: True where every reward of the group equals the first."""
    return (groups == groups[:, :1]).all(dim=-1)  # [B]


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """Group-relative advantages ``(r - mean_g) [/ (std_g + eps)]``.

    GRPO scales by the group's standard deviation (Bessel-corrected); Dr. GRPO only centres
    (``scale_by_std=False``). Groups whose rewards are all equal get exactly 0 (never NaN).

    Args:
        rewards: ``[N]`` rewards; consecutive ``group_size`` rows form one group.
        group_size: G, completions per prompt (>= 2).
        scale_by_std: Divide the centred rewards by ``std + eps``.
        eps: Added to the standard deviation.

    Returns:
        ``[N]`` advantages, same floating dtype as ``rewards`` (float32 for integer rewards).
    """
    groups = _groups(rewards, group_size)  # [B, G]
    centred = groups - groups.mean(dim=-1, keepdim=True)  # [B, G]
    std = groups.std(dim=-1, correction=1, keepdim=True)  # [B, 1]
    divisor = std + eps if scale_by_std else torch.ones_like(std)  # [B, 1]
    scaled = centred / divisor  # [B, G]
    uniform = _uniform(groups).unsqueeze(-1)  # [B, 1]
    return torch.where(uniform, torch.zeros_like(scaled), scaled).reshape(-1)  # [N]


def dynamic_sampling_keep(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """DAPO dynamic sampling: keep the groups whose rewards are not all equal.

    Args:
        rewards: ``[N]`` rewards; consecutive ``group_size`` rows form one group.
        group_size: G (>= 2).

    Returns:
        ``bool [N / G]``, True for groups that carry a learning signal.
    """
    groups = _groups(rewards, group_size)  # [B, G]
    return ~_uniform(groups)  # [B]
