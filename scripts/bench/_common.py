"""Helpers shared by the long-context benchmarks: models, synthetic groups, timing, figure lines."""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Callable

import psutil
import torch

from longact_pl.models.types import LoadedModel
from longact_pl.precision_choice import cpu_bf16_support

# Lightning's names for what an arm runs: fp32 weights under bf16 autocast, or fp32 throughout
BF16_MIXED, FP32 = "bf16-mixed", "32-true"


def load(name: str, gradient_checkpointing: bool = False) -> LoadedModel:
    """A model by name.

    ``smollm2`` is the cached SmolLM2-135M; ``tiny_llama`` / ``tiny_qwen3`` the 2-layer hidden-64 test models;
    ``small_llama`` a random 4-layer hidden-256 Llama (quick modes: big enough that the transformer, not the
    49k-token LM head, dominates, as in real models).
    """
    if name == "smollm2":
        from longact_pl.models.smollm2 import load_smollm2

        return load_smollm2(gradient_checkpointing=gradient_checkpointing)
    from longact_pl.models import tiny

    if name == "small_llama":
        return tiny.tiny_llama(
            hidden_size=256, num_layers=4, heads=4, kv_heads=2, gradient_checkpointing=gradient_checkpointing
        )
    return getattr(tiny, name)(seed=0, gradient_checkpointing=gradient_checkpointing)


def synthetic_groups(
    vocab: int, groups: int, group_size: int, prompt_len: int, completion_len: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A rollout-shaped batch: G rows per prompt, ragged prompts (left pad) and completions (right pad).

    Returns:
        ``(input_ids [B*G, P + C], attention_mask [B*G, P + C])``; group ``b``'s prompt is
        ``prompt_len - 7 * b`` tokens and row ``r`` of a group ends ``r`` tokens early.
    """
    gen = torch.Generator().manual_seed(seed)
    n = groups * group_size
    ids = torch.randint(10, vocab, (n, prompt_len + completion_len), generator=gen)  # [N, P + C]
    mask = torch.ones_like(ids)  # [N, P + C]
    for b in range(groups):
        rows = slice(b * group_size, (b + 1) * group_size)
        pad = min(7 * b, prompt_len - 1)
        ids[rows, :prompt_len] = ids[b * group_size, :prompt_len]
        ids[rows, :pad], mask[rows, :pad] = 0, 0
        for r in range(group_size):
            cut = min(r, completion_len - 1)
            if cut:
                ids[b * group_size + r, -cut:], mask[b * group_size + r, -cut:] = 0, 0
    return ids, mask


def median_time(fn: Callable[[], object], reps: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``reps`` runs after ``warmup`` untimed runs (seconds)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_times(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 1) -> dict[str, float]:
    """Median times of several arms run in turn (so machine noise hits all alike), in seconds.

    Every run's time goes to stderr as progress (warm-up runs included, marked).
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    for rep in range(warmup + reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            took = time.perf_counter() - start
            print(f"{name}: {took:.2f} s{' (warm-up)' if rep < warmup else ''}", file=sys.stderr, flush=True)
            if rep >= warmup:
                times[name].append(took)
    return {k: statistics.median(v) for k, v in times.items()}


def figure(name: str, ratio: float, a: float, b: float) -> str:
    """Print and return one result line ``name ratio=<x> a=<ours> b=<baseline>``."""
    line = f"{name} ratio={ratio:.2f} a={a:.4g} b={b:.4g}"
    print(line, flush=True)
    return line


def bf16_units() -> str:
    """``yes (<units>)`` or ``no (...)``: whether this CPU computes bf16 natively (AMX, AVX512_BF16, BF16).

    Without such units bf16 autocast is emulated and slower than fp32 (the default run: 2.6x), so a
    ``bf16-mixed`` figure from one kind of CPU says little about the other.
    """
    found = cpu_bf16_support()
    return f"{'yes' if found.native else 'no'} ({found.detail})"


def precision_line(arms: dict[str, str]) -> str:
    """Print and return ``# precision: <arm>=<precision> ...; cpu_bf16_units=<yes|no> (...)``.

    Args:
        arms: Each arm's name and the precision it ran (``BF16_MIXED`` or ``FP32``).
    """
    line = (
        "# precision: "
        + " ".join(f"{arm}={p}" for arm, p in arms.items())
        + f"; cpu_bf16_units={bf16_units()}"
    )
    print(line, flush=True)
    return line


def set_threads(threads: int) -> None:
    """Use ``threads`` torch CPU threads (0 = leave the default)."""
    if threads > 0:
        torch.set_num_threads(threads)


class PeakRSS:
    """Samples this process's RSS in a thread; ``peak_mb`` is the maximum above the starting RSS."""

    def __init__(self, interval: float = 0.001) -> None:
        self.proc, self.interval = psutil.Process(), interval
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return (self.peak - self.start) / 2**20
