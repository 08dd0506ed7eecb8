"""Per-channel activation statistics gathered by forward hooks on the measured modules."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


def _mean_abs(s: ChannelStats) -> Tensor:
    """Mean of ``|x|`` over tokens."""
    return s.sum_abs / max(s.count, 1)  # [C]


def _rms(s: ChannelStats) -> Tensor:
    """Root mean square over tokens."""
    return (s.sum_sq / max(s.count, 1)).sqrt()  # [C]


def _max_abs(s: ChannelStats) -> Tensor:
    """Largest ``|x|`` over tokens."""
    return s.max_abs  # [C]


STATISTICS: dict[str, Callable[[ChannelStats], Tensor]] = {
    "mean_abs": _mean_abs,
    "rms": _rms,
    "max_abs": _max_abs,
}


def check_statistic(statistic: str) -> str:
    """Validate a statistic name.

    Raises:
        ValueError: If ``statistic`` is not a key of :data:`STATISTICS`.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"masking.statistic={statistic!r} is not supported; use one of {list(STATISTICS)}")
    return statistic


class ChannelStats:
    """Running sums over valid tokens for one module output with ``C`` channels (float32, on its device)."""

    def __init__(self, channels: int, device: torch.device | str = "cpu") -> None:
        self.sum_abs = torch.zeros(channels, device=device)  # [C]
        self.sum_sq = torch.zeros(channels, device=device)  # [C]
        self.max_abs = torch.zeros(channels, device=device)  # [C]
        self.count = 0

    @torch.no_grad()
    def add(self, x: Tensor) -> None:
        """Accumulate token activations.

        Args:
            x: Activations of valid tokens only.  # [N, C]
        """
        if x.shape[0] == 0:
            return
        a = x.float().abs()  # [N, C]
        self.sum_abs += a.sum(0)  # [C]
        self.sum_sq += a.square().sum(0)  # [C]
        torch.maximum(self.max_abs, a.amax(0), out=self.max_abs)  # [C]
        self.count += x.shape[0]

    def statistic(self, name: str) -> Tensor:
        """Return the named per-channel statistic on CPU (see :data:`STATISTICS`)."""
        return STATISTICS[check_statistic(name)](self).cpu()  # [C]


TokenGate = Callable[[], "Tensor | None"]


class StatsCollector:
    """Forward hooks that accumulate :class:`ChannelStats` per module while a token mask is present.

    A hook counts a forward only if ``gate()`` returns a bool mask ``[B, T]`` whose shape matches the first
    two dims of the output (so generation steps with a KV cache, or forwards of other shapes, never
    count), and only the tokens where the mask is True. Outputs with more than 3 dims (Qwen3 ``q_norm`` gives
    ``[B, T, H, D]``) are flattened to ``[B, T, H*D]``.
    """

    def __init__(self, modules: Mapping[str, nn.Module], gate: TokenGate) -> None:
        """Create (but do not attach) the hooks.

        Args:
            modules: Stats key (the masked projection's name) -> module whose output is measured.
            gate: Returns the current valid-token mask ``[B, T]`` or ``None`` (= do not count).
        """
        self.modules = dict(modules)
        self.gate = gate
        self.stats: dict[str, ChannelStats] = {}
        self._handles: list[RemovableHandle] = []

    @property
    def attached(self) -> bool:
        """Whether the hooks are registered."""
        return bool(self._handles)

    def attach(self) -> None:
        """Register the forward hooks (idempotent)."""
        if self._handles:
            return
        for key, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._hook(key)))

    def detach(self) -> None:
        """Remove the forward hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def reset(self) -> dict[str, ChannelStats]:
        """Return the stats gathered so far and start new ones."""
        stats, self.stats = self.stats, {}
        return stats

    def tokens(self) -> int:
        """Tokens counted so far (max over modules)."""
        return max((s.count for s in self.stats.values()), default=0)

    def _hook(self, key: str) -> Callable[[nn.Module, tuple, Tensor], None]:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            mask = self.gate()
            if mask is None or not isinstance(output, Tensor) or output.dim() < 3:
                return
            if tuple(output.shape[:2]) != tuple(mask.shape):
                return
            out = output.detach().flatten(2)  # [B, T, C]
            if key not in self.stats:
                self.stats[key] = ChannelStats(out.shape[-1], device=out.device)
            self.stats[key].add(out[mask.to(device=out.device, dtype=torch.bool)])  # [N, C]

        return hook
