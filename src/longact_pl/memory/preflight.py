"""``train.py``'s memory preflight: print the plan, refuse a run that would not fit, before anything loads.

Settings (``conf/train.yaml``, ``memory:``): ``memory.check`` = ``refuse`` (default) | ``warn`` | ``off``;
``memory.limit_gb`` = the memory per rank to plan against (``null``: the CUDA device's total memory, or on the
CPU the machine's memory divided among the ranks on it).
"""

from __future__ import annotations

import logging
import os

import psutil
import torch
from omegaconf import DictConfig, OmegaConf

from longact_pl.memory.advice import fixes
from longact_pl.memory.from_config import plan_inputs, world_size
from longact_pl.memory.plan import GIB, MemoryPlan, plan_memory
from longact_pl.memory.report import format_plan

log = logging.getLogger(__name__)
CHECKS = ("refuse", "warn", "off")


class MemoryPlanError(RuntimeError):
    """The predicted peak exceeds the memory available per rank."""


def device_limit(device: str, ranks_per_node: int) -> tuple[int | None, str]:
    """``(bytes per rank, what it is)``: the CUDA device's total memory, or RAM / ranks on this machine."""
    if device == "cuda":
        if not torch.cuda.is_available():
            return None, "no CUDA device visible here"
        index = int(os.environ.get("LOCAL_RANK", 0)) % max(1, torch.cuda.device_count())
        return torch.cuda.get_device_properties(index).total_memory, f"cuda:{index} total memory"
    ram = psutil.virtual_memory().total
    share = f" / {ranks_per_node} ranks" if ranks_per_node > 1 else ""
    return ram // max(1, ranks_per_node), f"this machine's memory{share}"


def settings_of(cfg: DictConfig) -> tuple[str, float | None]:
    """``(memory.check, memory.limit_gb)``.

    Raises:
        ValueError: Naming ``memory.check`` or ``memory.limit_gb`` for a bad value.
    """
    check = str(OmegaConf.select(cfg, "memory.check", default="refuse"))
    if check not in CHECKS:
        raise ValueError(f"memory.check must be one of {list(CHECKS)}, got {check!r}")
    limit = OmegaConf.select(cfg, "memory.limit_gb", default=None)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
        raise ValueError(f"memory.limit_gb must be a positive number of GiB or null, got {limit!r}")
    return check, None if limit is None else float(limit)


def memory_preflight(cfg: DictConfig, announce: bool = True) -> MemoryPlan | None:
    """Plan the run's memory; print it (``announce``), and refuse it when it does not fit.

    Call after ``trainer.precision`` is resolved and before any model loads or file is written.

    Returns:
        The plan (``None`` with ``memory.check=off`` or a model whose shape is unknown without loading it).

    Raises:
        MemoryPlanError: With ``memory.check=refuse``, when the predicted peak exceeds the limit; the message
            names the settings that would fit.
    """
    check, limit_gb = settings_of(cfg)
    if check == "off":
        return None
    _, per_node = world_size(cfg)
    shape, settings, batching = plan_inputs(cfg)
    if shape is None:
        if announce:
            log.warning(
                "memory plan: the shape of model.name_or_path=%s is unknown without loading it (a local "
                "folder's config.json is read; see longact_pl.memory.shapes.KNOWN); no preflight",
                OmegaConf.select(cfg, "model.name_or_path"),
            )
        return None
    if limit_gb is not None:
        limit, source = int(limit_gb * GIB), "memory.limit_gb"
    else:
        limit, source = device_limit(settings.device, per_node)
    if settings.engine_bytes == 0 and settings.device == "cuda" and limit is not None:
        shape, settings, batching = plan_inputs(cfg, device_bytes=limit)  # gpu_memory_utilization x device
    plan = plan_memory(shape, settings)
    fits = limit is None or plan.peak <= limit
    advice = [] if fits else fixes(shape, settings, limit, batching.prompt, batching.completion)
    if announce:
        text = format_plan(plan, limit, advice)
        print(f"{text}\n  (limit from {source}; memory.check={check})", flush=True)
    if not fits:
        message = (
            f"predicted peak memory {plan.peak / GIB:.2f} GiB per rank ({plan.peak_phase}) exceeds the "
            f"{limit / GIB:.2f} GiB of {source}. "
            + "; ".join(advice)
            + ". Or set memory.check=warn to run anyway (memory.limit_gb sets the limit)"
        )
        if check == "refuse":
            raise MemoryPlanError(message)
        log.warning("%s", message)
    return plan
