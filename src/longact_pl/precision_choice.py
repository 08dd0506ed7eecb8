"""``trainer.precision=auto``: bf16 compute where the hardware has bf16 units, fp32 everywhere else.

bf16 autocast is only fast where the matmuls run on bf16 units: GPUs from Ampere (compute capability 8) on,
and CPUs with AMX or AVX512_BF16 (oneDNN). Elsewhere it is emulated, and slower than fp32: on a 2-core Xeon
with AVX-512F but neither AVX512_BF16 nor AMX the default run took 116-129 tokens/s at ``bf16-mixed`` and
287-344 at ``32-true`` (2.6x). ``auto`` therefore picks ``bf16-mixed`` (fp32 master weights, bf16 autocast;
see :mod:`longact_pl.precision`) where bf16 is native and ``32-true`` otherwise; ``fp16-mixed`` (loss scaling,
overflow) is never picked automatically. An explicit ``trainer.precision`` is used as given.

:func:`resolve_precision` is the rule (pure: the capability probe is an argument); :func:`choose_precision`
applies it to a composed config before anything reads ``trainer.precision``, so ``config.yaml`` records the
precision the run used and, under ``precision_choice``, why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)

AUTO = "auto"
# x86 (AMX, AVX512_BF16) and ARM (BF16, SVE BF16) capability names of bf16 matmul units, as torch and
# /proc/cpuinfo spell them
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16", "sve_bf16")


@dataclass(frozen=True)
class Bf16Support:
    """What a probe found.

    Attributes:
        native: The device computes bf16 natively (autocast to bf16 is not emulated).
        detail: What the answer rests on (e.g. ``"avx512_bf16"``, ``"NVIDIA H100, compute capability 9.0"``).
    """

    native: bool
    detail: str


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run uses and why (recorded in ``config.yaml`` as ``precision_choice``).

    Attributes:
        precision: The Lightning precision the trainer gets (never ``auto``).
        requested: ``trainer.precision`` as configured.
        device: ``cuda``, ``cpu`` or the accelerator's name.
        reason: One sentence: why this precision.
    """

    precision: str
    requested: str
    device: str
    reason: str


def resolve_precision(requested: str, device: str, probe: Callable[[str], Bf16Support]) -> PrecisionChoice:
    """The precision for ``trainer.precision=requested`` on ``device`` (the rule of ``auto``).

    Args:
        requested: ``trainer.precision`` (``auto`` or any Lightning value, e.g. ``bf16-mixed``, ``32-true``).
        device: ``cuda``, ``cpu``, or another accelerator's name (``mps``, ``tpu``: no probe, fp32).
        probe: ``device -> Bf16Support``; called only for ``auto``.

    Returns:
        ``bf16-mixed`` where ``probe`` reports native bf16, else ``32-true`` (``fp16-mixed`` never); any
        other ``requested`` value unchanged.
    """
    requested = str(requested)
    if requested != AUTO:
        return PrecisionChoice(requested, requested, device, "set explicitly (trainer.precision)")
    found = probe(device)
    if found.native:
        why = f"{device} has native bf16 ({found.detail}): bf16 autocast over fp32 master weights"
        return PrecisionChoice("bf16-mixed", AUTO, device, why)
    why = (
        f"{device} has no native bf16 ({found.detail}): bf16 autocast would be emulated and slower than fp32 "
        "(fp16-mixed is never chosen automatically)"
    )
    return PrecisionChoice("32-true", AUTO, device, why)


def cpu_bf16_support() -> Bf16Support:
    """Whether this CPU has bf16 matmul units, as torch reports it (``/proc/cpuinfo`` flags as a fallback)."""
    caps: dict = {}
    get = getattr(getattr(torch, "cpu", None), "get_capabilities", None)  # torch >= 2.9
    if callable(get):
        try:
            caps = dict(get())
        except Exception:  # noqa: BLE001 - an unreadable capability table falls back to the flags below
            caps = {}
    if not caps:
        for flag, name in (
            ("avx512_bf16", "_is_avx512_bf16_supported"),
            ("amx_bf16", "_is_amx_tile_supported"),
        ):
            fn = getattr(getattr(torch, "cpu", None), name, None)
            caps[flag] = bool(fn()) if callable(fn) else False
        caps = caps if any(caps.values()) else cpuinfo_flags()
    have = [f for f in CPU_BF16_FLAGS if caps.get(f) is True]
    return Bf16Support(bool(have), "+".join(have) if have else "no AMX/AVX512_BF16/BF16 units")


def cpuinfo_flags(path: str = "/proc/cpuinfo") -> dict[str, bool]:
    """The bf16 flags of ``/proc/cpuinfo`` (x86 ``flags``, ARM ``Features``); all ``False`` if unreadable."""
    words: set[str] = set()
    try:
        for line in Path(path).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                words.update(value.split())
    except OSError:
        pass
    return {f: f in words for f in CPU_BF16_FLAGS}


def cuda_bf16_support() -> Bf16Support:
    """Whether the current CUDA device computes bf16 natively (compute capability 8.0+; not emulated)."""
    if not torch.cuda.is_available():
        return Bf16Support(False, "no CUDA device")
    major, minor = torch.cuda.get_device_capability()
    detail = f"{torch.cuda.get_device_name()}, compute capability {major}.{minor}"
    return Bf16Support(bool(torch.cuda.is_bf16_supported(including_emulation=False)), detail)


def default_probe(device: str) -> Bf16Support:
    """The real probe: CUDA's or the CPU's bf16 support; other accelerators report none."""
    if device == "cuda":
        return cuda_bf16_support()
    if device == "cpu":
        return cpu_bf16_support()
    return Bf16Support(False, f"no bf16 probe for accelerator {device!r}")


def device_of(accelerator: object) -> str:
    """The device ``trainer.accelerator`` runs on: ``cuda``, ``cpu``, or the accelerator's own name.

    ``auto`` is what Lightning picks first here: a CUDA GPU if there is one, else the CPU (an Apple GPU is
    reported as ``mps``, which ``auto`` runs in fp32).
    """
    name = str(accelerator).lower()
    if name in ("gpu", "cuda"):
        return "cuda"
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    return name


def choose_precision(
    cfg: DictConfig, probe: Callable[[str], Bf16Support] = default_probe, announce: bool = True
) -> PrecisionChoice:
    """Resolve ``cfg.trainer.precision`` in place and record the choice as ``cfg.precision_choice``.

    Args:
        cfg: A composed ``conf/train.yaml`` (``trainer.precision``, ``trainer.accelerator``).
        probe: The capability probe (tests stub it).
        announce: Log the choice and its reason (rank 0 does, once per run).

    Returns:
        The choice (``cfg.trainer.precision`` now holds ``choice.precision``).
    """
    trainer = cfg.trainer
    choice = resolve_precision(
        trainer.get("precision", AUTO), device_of(trainer.get("accelerator", AUTO)), probe
    )
    with open_dict(cfg):
        if choice.requested == AUTO:  # an explicit value stays exactly as written
            trainer.precision = choice.precision
        cfg.precision_choice = asdict(choice)
    if announce:
        log.info("trainer.precision=%s -> %s: %s", choice.requested, choice.precision, choice.reason)
    return choice
