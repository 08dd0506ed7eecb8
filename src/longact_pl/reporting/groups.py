"""Group runs into ablation cells (algo x masking, plus whatever else differs) and reduce over seeds."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from longact_pl.reporting.collect import RunRecord

# algorithm class (last part of algo._target_) -> conf/algo option, for runs made before algo.name existed
ALGO_NAMES = {"GRPO": "grpo", "DAPO": "dapo", "DrGRPO": "dr_grpo"}
# masking selector class -> conf/masking option (no masking._target_ = none)
SELECTOR_NAMES = {"TopK": "saliency", "RandomK": "random", "BottomK": "inverse"}


@dataclass(frozen=True)
class GroupKey:
    """One ablation cell.

    Attributes:
        algo: ``conf/algo`` option (or the class name of an unknown algorithm).
        masking: ``conf/masking`` option (or the selector's class name).
        extra: Other settings that differ between runs of this algo x masking, as ``(key, value)`` pairs.
    """

    algo: str
    masking: str
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def variant(self) -> str:
        """The extra settings as ``k=v, ...`` (empty when none)."""
        return ", ".join(f"{k}={v}" for k, v in self.extra)


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (n - 1) of ``n`` values; ``std`` is None below two values."""

    mean: float
    std: float | None
    n: int


def _class_name(target: Any) -> str:
    return str(target).rsplit(".", 1)[-1]


def algo_name(config: Mapping[str, Any]) -> str:
    """The ``conf/algo`` option a resolved config was composed with (its ``algo.name``)."""
    algo = config.get("algo") or {}
    if algo.get("name"):
        return str(algo["name"])
    target = algo.get("_target_")
    return ALGO_NAMES.get(_class_name(target), _class_name(target).lower()) if target else "?"


def masking_name(config: Mapping[str, Any]) -> str:
    """The ``conf/masking`` option a resolved config was composed with (``none``: no masking callback)."""
    if "masking" not in config:  # unknown, not dense
        return "?"
    masking = config.get("masking") or {}
    if "_target_" not in masking:
        return "none"
    selector = _class_name((masking.get("selector") or {}).get("_target_", "?"))
    return SELECTOR_NAMES.get(selector, selector)


def flatten(node: Any, prefix: str = "") -> dict[str, str]:
    """``{"a.b": "1", ...}`` for every leaf of a nested dict (lists are kept whole, as text)."""
    if isinstance(node, Mapping):
        out: dict[str, str] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: str(node)}


# Config sections that never change a run's numbers (where and how often it logs and checkpoints, and whether
# it validates before training: greedy, no_grad, no random draw, so the training is the same either way)
BOOKKEEPING = (
    "logger.", "callbacks.model_checkpoint.", "callbacks.step_log.", "validate_before_training",
    "validate_at_step0.",
)  # fmt: skip


def _comparable(config: Mapping[str, Any]) -> dict[str, str]:
    """Flattened config without what differs between seeds of one setting.

    Left out: seeds, per-run paths, and the bookkeeping sections (loggers, checkpoint cadence, step log).
    """
    flat = flatten(config)
    out_dir = flat.get("paths.output_dir")
    return {
        k: v
        for k, v in flat.items()
        if k.rsplit(".", 1)[-1] != "seed"
        and k != "ckpt_path"
        and not k.startswith(BOOKKEEPING)
        and not (out_dir and out_dir in v)
    }


def group_runs(runs: Iterable[RunRecord]) -> dict[GroupKey, list[RunRecord]]:
    """Runs by ablation cell; runs that share algo and masking but differ elsewhere get separate cells.

    Seeds, anything holding the run's own output path, ``ckpt_path`` and the :data:`BOOKKEEPING` sections
    are not settings: runs that differ only there are seeds of one cell.
    """
    buckets: dict[tuple[str, str], list[RunRecord]] = {}
    for run in runs:
        buckets.setdefault((algo_name(run.config), masking_name(run.config)), []).append(run)
    groups: dict[GroupKey, list[RunRecord]] = {}
    for (algo, masking), members in sorted(buckets.items()):
        flats = [_comparable(r.config) for r in members]
        keys = sorted(set().union(*flats))
        varying = [k for k in keys if len({f.get(k) for f in flats}) > 1]
        for run, flat in zip(members, flats):
            key = GroupKey(algo, masking, tuple((k, flat.get(k, "-")) for k in varying))
            groups.setdefault(key, []).append(run)
    return dict(sorted(groups.items(), key=lambda kv: (kv[0].algo, kv[0].masking, kv[0].extra)))


def stat(values: Iterable[float | None]) -> Stat | None:
    """Mean and sample std of the values that exist and are finite (None when there are none)."""
    kept = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not kept:
        return None
    return Stat(statistics.fmean(kept), statistics.stdev(kept) if len(kept) > 1 else None, len(kept))
