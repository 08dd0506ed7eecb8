"""Per-unit activation statistics gathered by hooks on the measured modules.

A *unit* is what a mask keeps or drops as a whole. For ``channel`` and ``head`` units the statistics are kept
per channel (a head's score is the sum of its channels'). For ``rope_pair`` they are kept per pair, from the
per-token magnitude of the pair ``sqrt(x_d^2 + x_d'^2)``: RoPE rotates the two channels of a pair by the same
angle, so this magnitude, and any statistic over tokens of it (mean, RMS, max), is the same before and after
RoPE. Channel statistics summed over a pair are not (a rotation moves mass between the two channels).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from longact_pl.masking.attention_tap import tap_attention


def _mean_abs(s: ChannelStats) -> Tensor:
    """Mean of ``|x|`` over tokens."""
    return s.sum_abs / max(s.count, 1)  # [U]


def _rms(s: ChannelStats) -> Tensor:
    """Root mean square over tokens."""
    return (s.sum_sq / max(s.count, 1)).sqrt()  # [U]


def _max_abs(s: ChannelStats) -> Tensor:
    """Largest ``|x|`` over tokens."""
    return s.max_abs  # [U]


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
    """Running sums over valid tokens of one target's ``C`` output channels (float32, on its device).

    Args:
        channels: Output channels ``C``.
        device: Where the sums live.
        units: Channel -> unit map whose units are scored by their per-token magnitude (RoPE pairs), or
            ``None`` to score every channel on its own.  # [C] long
        scores: Keep the score sums; ``False`` keeps only the per-channel L1 mass (telemetry).
    """

    def __init__(
        self,
        channels: int,
        device: torch.device | str = "cpu",
        units: Tensor | None = None,
        scores: bool = True,
    ) -> None:
        self.units = None if units is None else units.to(device)  # [C]
        n = channels if units is None else int(units.max()) + 1
        self.scores = scores
        self.l1 = torch.zeros(channels, device=device)  # [C] sum of |x_c|
        self.sum_abs = torch.zeros(n if scores else 0, device=device)  # [U]
        self.sum_sq = torch.zeros(n if scores else 0, device=device)  # [U]
        self.max_abs = torch.zeros(n if scores else 0, device=device)  # [U]
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
        l1 = a.sum(0)  # [C]
        self.l1 += l1
        self.count += x.shape[0]
        if not self.scores:
            return
        if self.units is not None:  # per-token magnitude of each unit (a RoPE pair)
            sq = a.new_zeros(a.shape[0], self.sum_abs.numel()).index_add_(1, self.units, a.square())  # [N, U]
            self.sum_sq += sq.sum(0)  # [U]
            a = sq.sqrt()  # [N, U]
            self.sum_abs += a.sum(0)  # [U]
        else:
            self.sum_abs += l1  # [U] = [C]
            self.sum_sq += a.square().sum(0)  # [U]
        torch.maximum(self.max_abs, a.amax(0), out=self.max_abs)  # [U]

    def merge(self, other: ChannelStats) -> None:
        """Add the tokens counted by ``other`` (same channels and units)."""
        self.l1 += other.l1
        self.count += other.count
        if self.scores and other.scores:
            self.sum_abs += other.sum_abs
            self.sum_sq += other.sum_sq
            torch.maximum(self.max_abs, other.max_abs, out=self.max_abs)

    def statistic(self, name: str) -> Tensor:
        """Return the named per-unit statistic on CPU (see :data:`STATISTICS`)."""
        return STATISTICS[check_statistic(name)](self).cpu()  # [U]

    def mean_l1(self) -> Tensor:
        """Mean ``|x|`` per channel, on CPU (the mass the ``l1_share`` diagnostics split)."""
        return (self.l1 / max(self.count, 1)).cpu()  # [C]


def sync_stats(stats: Mapping[str, ChannelStats], reduce: Callable[..., Tensor]) -> None:
    """Sum (max for ``max_abs``) statistics over data-parallel ranks, in place.

    Args:
        stats: Target name -> this rank's statistics (the same names on every rank).
        reduce: ``reduce(tensor, reduce_op="sum" | "max")`` over ranks (a Lightning strategy's ``reduce``).
    """
    for s in stats.values():
        s.l1 = reduce(s.l1, reduce_op="sum")
        if s.scores:
            s.sum_abs = reduce(s.sum_abs, reduce_op="sum")
            s.sum_sq = reduce(s.sum_sq, reduce_op="sum")
            s.max_abs = reduce(s.max_abs, reduce_op="max")
        s.count = int(reduce(torch.tensor(float(s.count), device=s.l1.device), reduce_op="sum"))


@dataclass(frozen=True, eq=False)
class Probe:
    """Where a target's activations are read.

    Attributes:
        module: The module whose forward output is read, or the attention layer whose attention-function
            inputs are read.
        columns: Output channels that belong to the target (a fused projection's part); ``None`` = all.
        read: ``output`` (the module's output), ``query`` or ``key`` (the attention function's inputs).
    """

    module: nn.Module
    columns: Tensor | None = None
    read: str = "output"


TokenGate = Callable[[], "Tensor | None"]


class StatsCollector:
    """Hooks that accumulate :class:`ChannelStats` per target while a token mask is present.

    A hook counts a forward only if ``gate()`` returns a bool mask ``[B, T]`` whose shape matches the
    measured tensor's batch and (new) token dims (so generation steps with a KV cache, or forwards of other
    shapes, never count), and only the tokens where the mask is True. Outputs with more than 3 dims (Qwen3
    ``q_norm`` gives ``[B, T, H, D]``) are flattened to ``[B, T, H*D]``; attention inputs ``[B, H, T, D]`` to
    ``[B, T, H*D]`` (keys: only the ``T`` newest positions, not the cached ones). The valid positions are
    found once per gate mask object (a new mask per forward; it must not be changed in place).
    """

    def __init__(
        self,
        probes: Mapping[str, Probe | nn.Module],
        gate: TokenGate,
        units: Mapping[str, Tensor | None] | None = None,
        scores: bool = True,
    ) -> None:
        """Create (but do not attach) the hooks.

        Args:
            probes: Stats key (the target's name) -> where to read (a bare module = its whole output).
            gate: Returns the current valid-token mask ``[B, T]`` or ``None`` (= do not count).
            units: Stats key -> channel-to-unit map for magnitude-scored units (see :class:`ChannelStats`).
            scores: Keep score sums (``False``: per-channel L1 mass only, for telemetry).
        """
        self.probes = {k: p if isinstance(p, Probe) else Probe(p) for k, p in probes.items()}
        self.gate = gate
        self.units = dict(units or {})
        self.scores = scores
        self.stats: dict[str, ChannelStats] = {}
        self._handles: list = []
        self._mask: Tensor | None = None  # the gate mask of the current forward, and its valid positions
        self._where: tuple[Tensor, Tensor, Tensor] | None = None  # (flat, batch, time): once per forward

    @property
    def attached(self) -> bool:
        """Whether the hooks are registered."""
        return bool(self._handles)

    def attach(self) -> None:
        """Register the hooks (idempotent)."""
        if self._handles:
            return
        taps: dict[int, list[tuple[str, Probe]]] = {}
        for key, probe in self.probes.items():
            if probe.read == "output":
                self._handles.append(probe.module.register_forward_hook(self._output_hook(key)))
            else:
                taps.setdefault(id(probe.module), []).append((key, probe))
        for entries in taps.values():
            self._handles.append(tap_attention(entries[0][1].module, self._attention_observer(entries)))

    def detach(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def reset(self) -> dict[str, ChannelStats]:
        """Return the stats gathered so far and start new ones."""
        stats, self.stats = self.stats, {}
        return stats

    def tokens(self) -> int:
        """Tokens counted so far (max over targets)."""
        return max((s.count for s in self.stats.values()), default=0)

    def _count(self, key: str, x: Tensor) -> None:
        """Accumulate the valid tokens of ``x`` (``[B, T, ...]``, channels last) under ``key``."""
        mask = self.gate()
        if mask is None or x.dim() < 3 or tuple(x.shape[:2]) != tuple(mask.shape):
            return
        if self._mask is not mask or self._where is None or self._where[0].device != x.device:
            self._mask = mask  # (held, so its id cannot be reused while it is compared)
            valid = mask.to(device=x.device, dtype=torch.bool)  # [B, T]
            self._where = (valid.flatten().nonzero().flatten(), *valid.nonzero(as_tuple=True))  # [N] each
        # gather the valid tokens with the cached indices: one device sync per forward, not one per hook
        flat, batch, time = self._where
        if x.is_contiguous():
            x = x.detach().view(-1, *x.shape[2:]).index_select(0, flat).flatten(1)  # [N, C_all]
        else:  # attention inputs, transposed
            x = x.detach()[batch, time].flatten(1)  # [N, C_all]
        columns = self.probes[key].columns
        if columns is not None:
            x = x.index_select(1, columns.to(x.device))  # [N, C]
        if key not in self.stats:
            self.stats[key] = ChannelStats(x.shape[-1], x.device, self.units.get(key), self.scores)
        self.stats[key].add(x)

    def _output_hook(self, key: str) -> Callable[[nn.Module, tuple, Tensor], None]:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if isinstance(output, Tensor):
                self._count(key, output)  # [B, T, C] or [B, T, H, D]

        return hook

    def _attention_observer(self, entries: list[tuple[str, Probe]]) -> Callable[[Tensor, Tensor], None]:
        def observe(query: Tensor, key: Tensor) -> None:
            new = query.shape[2]  # T: keys hold cached positions first, then the T new ones
            for name, probe in entries:
                x = query if probe.read == "query" else key[:, :, key.shape[2] - new :]  # [B, H, T, D]
                self._count(name, x.transpose(1, 2))  # [B, T, H, D]

        return observe
