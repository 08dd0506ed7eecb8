"""Rollout-correction weights: a level (how token log-ratios become a weight) and a mode (what the bounds do).

Both are classes chosen by ``_target_`` in ``conf/correction/*.yaml`` (``correction.level``,
``correction.mode``) and used by :class:`~longact_pl.algos.correction.RolloutCorrection`, which owns the
bounds (``correction.low`` / ``correction.high``), rejection and the metrics. A new level or mode is a new
class with the Protocol's methods plus a preset naming it (``docs/extending.md``).

Shapes: ``N`` completions, ``T`` padded completion length; ``log_r = log pi_trainer - log pi_sampler`` per
token, 0 at padding.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class WeightLevel(Protocol):
    """Turns token log-ratios into the log of each token's importance weight."""

    name: str  # shown in logs and errors as correction.level=<name>

    def log_weights(self, log_r: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``[N, T], bool [N, T] -> [N, T]`` log weights (values at padding are ignored)."""
        ...


@runtime_checkable
class WeightMode(Protocol):
    """Applies the bounds ``[low, high]`` to the raw weights and says which tokens it changed."""

    name: str  # shown in logs and errors as correction.mode=<name>

    def check(self, low: float | None, high: float, weighted: bool) -> None:
        """Refuse bounds this mode cannot use (``ValueError`` naming ``correction.<field>``).

        ``weighted`` says whether a level is set (with ``level: null`` only rejection acts).
        """
        ...

    def apply(
        self, raw: torch.Tensor, keep: torch.Tensor, low: float, high: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(weights [N, T], truncated bool [N, T], dropped bool [N, T])`` from raw weights ``[N, T]``.

        ``low`` is ``correction.low`` or ``1 / high`` when unset; flags count only where ``keep``.
        """
        ...


class _Named:
    """``str()`` is the config name (``token``), ``repr()`` the class."""

    name = ""

    def __str__(self) -> str:
        """The short name used in messages."""
        return self.name

    def __repr__(self) -> str:
        """The class, for logs."""
        return f"{type(self).__name__}()"


class TokenRatio(_Named):
    """One weight per token: ``r_t`` (token TIS / MIS)."""

    name = "token"

    def log_weights(self, log_r: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """See :class:`WeightLevel`."""
        return log_r  # [N, T]


class SequenceProduct(_Named):
    """One weight per sequence, on all its tokens: the product ``prod_t r_t`` (sequence TIS / MIS)."""

    name = "sequence"

    def log_weights(self, log_r: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """See :class:`WeightLevel`."""
        return log_r.sum(-1, keepdim=True).expand_as(log_r)  # [N, T]


class GeometricMean(_Named):
    """One weight per sequence, on all its tokens: the geometric mean ``exp(mean_t log r_t)``."""

    name = "geometric"

    def log_weights(self, log_r: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """See :class:`WeightLevel`."""
        counts = keep.sum(-1, keepdim=True).clamp(min=1)  # [N, 1]
        return (log_r.sum(-1, keepdim=True) / counts).expand_as(log_r)  # [N, T]


class Truncate(_Named):
    """TIS: the weight is capped at ``high``; nothing is dropped (``correction.low`` must stay unset)."""

    name = "truncate"

    def check(self, low: float | None, high: float, weighted: bool) -> None:
        """See :class:`WeightMode`."""
        if low is not None:
            raise ValueError(
                f"correction.low={low} has no effect with correction.mode=truncate (weights are only "
                "capped above); set correction.mode=mask to drop tokens below it, or leave it null"
            )

    def apply(self, raw, keep, low, high):
        """See :class:`WeightMode`."""
        weights = raw.clamp(max=high)  # [N, T]
        return weights, keep & (raw > high), torch.zeros_like(keep)  # [N, T] x 3


class Mask(_Named):
    """MIS: weights inside ``[low, high]`` are kept, the others set to 0 (the token leaves the loss)."""

    name = "mask"

    def check(self, low: float | None, high: float, weighted: bool) -> None:
        """See :class:`WeightMode`: the kept range must contain 1 (a perfect sampler keeps everything)."""
        lower = low if low is not None else 1.0 / high
        if weighted and not lower <= 1.0 <= high:
            source = (
                f"correction.low={low}" if low is not None else f"1/correction.high={lower:g} (low unset)"
            )
            raise ValueError(
                f"correction.mode=mask keeps weights in [{lower:g}, {high:g}] ({source}, correction.high="
                f"{high}), which does not contain 1: even a sampler that matches the trainer exactly would "
                "have every token masked out, a loss of 0 and nothing learned. Set correction.low <= 1 <= "
                "correction.high (e.g. correction.low=0.5 correction.high=2.0)"
            )

    def apply(self, raw, keep, low, high):
        """See :class:`WeightMode`."""
        inside = (raw >= low) & (raw <= high)  # [N, T]
        weights = torch.where(inside, raw, torch.zeros_like(raw))  # [N, T]
        return weights, torch.zeros_like(keep), keep & ~inside  # [N, T] x 3
