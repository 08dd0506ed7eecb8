"""Find the runs of a multirun directory, read their config and metrics, and say which ones are incomplete.

A run is a folder holding ``config.yaml`` (written by ``train.py``) and ``metrics.csv`` (``CSVLogger``). It is
*complete* when it also has ``final/`` and logged at least ``trainer.max_steps`` optimizer steps; anything
else is reported as missing or crashed, never dropped silently.
"""

from __future__ import annotations

import csv
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

RUN_FILES = ("config.yaml", "metrics.csv")
_JOB_NUM = re.compile(r"^(\d+)_")


@dataclass
class RunRecord:
    """One run folder as found on disk.

    Attributes:
        path: The run folder.
        config: The resolved ``config.yaml`` as a plain dict (empty when the file is missing).
        rows: ``metrics.csv`` rows, empty cells dropped, values as floats (empty when the file is missing).
        problems: Why the run is incomplete; empty for a complete run.
    """

    path: Path
    config: dict[str, Any]
    rows: list[dict[str, float]]
    problems: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when nothing is missing."""
        return not self.problems


@dataclass
class MissingJob:
    """A job the multirun asked for whose folder does not exist (the launcher died or never got to it).

    Attributes:
        num: Hydra's job number.
        overrides: The job's swept overrides.
    """

    num: int
    overrides: list[str]


def read_metrics(path: Path) -> list[dict[str, float]]:
    """Rows of a Lightning ``metrics.csv``, with empty and non-numeric cells dropped."""
    rows = []
    with path.open(newline="") as f:
        for raw in csv.DictReader(f):
            row = {}
            for key, value in raw.items():
                try:
                    row[key] = float(value)
                except (TypeError, ValueError):
                    continue
            rows.append(row)
    return rows


def train_rows(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    """Rows logged by a training step (they carry ``train/reward_mean``)."""
    return [r for r in rows if "train/reward_mean" in r]


def val_rows(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    """Rows logged by a validation pass (they carry ``val/acc``)."""
    return [r for r in rows if "val/acc" in r]


def steps_done(rows: list[dict[str, float]]) -> int:
    """Optimizer steps a run completed: training rows are logged at ``step`` 0 .. n-1."""
    steps = [r["step"] for r in train_rows(rows) if "step" in r]
    return int(max(steps)) + 1 if steps else 0


def problems_of(path: Path, config: dict[str, Any], rows: list[dict[str, float]]) -> list[str]:
    """Why a run folder is not a finished run (empty list: it is)."""
    problems = [f"no {name}" for name in RUN_FILES if not (path / name).is_file()]
    if not (path / "final").is_dir():
        problems.append("no final/")
    if (path / "metrics.csv").is_file():
        wanted = OmegaConf.select(OmegaConf.create(config), "trainer.max_steps", default=None)
        done = steps_done(rows)
        if wanted is not None and done < int(wanted):
            problems.append(f"{done} of {int(wanted)} steps")
    return problems


# Sections every config.yaml written by train.py has: one without them was cut short or is not a run's
REQUIRED_SECTIONS = ("seed", "model", "data", "algo", "rollout", "masking", "trainer", "module")


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:200]


def read_config(path: Path) -> tuple[dict[str, Any], list[str]]:
    """``(config, problems)`` of a run's ``config.yaml``.

    An unreadable, invalid or cut-short file is a problem named with the file, and its config is empty
    (unknown, never a default).
    """
    try:
        loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as err:  # noqa: BLE001 - binary, invalid YAML, unreadable: all mean "unknown"
        return {}, [f"{path.name} is not a readable config ({_first_line(err)})"]
    if not isinstance(loaded, dict):
        return {}, [f"{path.name} is not a config (a YAML {type(loaded).__name__}, not a mapping)"]
    missing = [k for k in REQUIRED_SECTIONS if k not in loaded]
    if missing:
        return {}, [f"{path.name} is incomplete (no {', '.join(missing)}): cut short, or not train.py's"]
    return loaded, []


def load_run(path: Path) -> RunRecord:
    """Read one run folder (missing or unreadable files give an empty config / no rows and a problem)."""
    config_file, metrics_file = path / "config.yaml", path / "metrics.csv"
    config: dict[str, Any] = {}
    unreadable: list[str] = []
    if config_file.is_file():
        config, unreadable = read_config(config_file)
    rows: list[dict[str, float]] = []
    if metrics_file.is_file():
        try:
            rows = read_metrics(metrics_file)
        except (UnicodeDecodeError, csv.Error, OSError, ValueError) as err:
            unreadable.append(f"{metrics_file.name} is not a readable CSV ({_first_line(err)})")
    problems = unreadable + problems_of(path, config, rows)
    return RunRecord(path=path, config=config, rows=rows, problems=problems)


def find_run_dirs(root: Path, exclude: Path | None = None) -> list[Path]:
    """Run folders under ``root``: every folder holding a run file, plus empty job folders of the sweep.

    Hidden folders (``.submitit/``) and ``exclude`` (the report folder) are skipped, and nothing inside a
    run folder (``final/``, ``wandb/``) is taken for another run.

    Args:
        root: The multirun directory (``hydra.sweep.dir``).
        exclude: A folder to ignore.
    """
    skip = exclude.resolve() if exclude is not None else None

    def ignored(p: Path) -> bool:
        rel = p.relative_to(root)
        return any(part.startswith(".") for part in rel.parts) or (
            skip is not None and (p.resolve() == skip or skip in p.resolve().parents)
        )

    runs = {f.parent for name in RUN_FILES for f in root.rglob(name) if not ignored(f.parent)}
    runs = {r for r in runs if not any(parent in runs for parent in r.parents)}
    # a job folder the launcher created but the job never wrote to (killed before config.yaml)
    runs |= {
        d
        for d in root.iterdir()
        if d.is_dir()
        and _JOB_NUM.match(d.name)
        and not ignored(d)
        and not any(r == d or d in r.parents for r in runs)
    }
    return sorted(runs, key=lambda p: (job_num(root, p), str(p)))


def job_num(root: Path, run_dir: Path) -> int:
    """Hydra's job number from the first folder below ``root`` (``<num>_...``); -1 when it has none."""
    parts = run_dir.relative_to(root).parts
    match = _JOB_NUM.match(parts[0]) if parts else None
    return int(match.group(1)) if match else -1


def expected_jobs(root: Path) -> list[list[str]] | None:
    """The jobs a basic-sweeper multirun launched, from its ``multirun.yaml`` (None when unknown).

    Reproduces Hydra's ``BasicSweeper`` order: the cartesian product of the sweep overrides (those in
    ``hydra.sweeper.params`` first), so job ``num`` gets ``result[num]``; each job lists only its swept
    overrides (``algo=dapo``, ``seed=1``), not the ones shared by every job.
    """
    path = root / "multirun.yaml"
    if not path.is_file():
        return None
    try:
        cfg = OmegaConf.load(path)
        if not str(OmegaConf.select(cfg, "hydra.sweeper._target_", default="")).endswith("BasicSweeper"):
            return None
        params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
        lines = [f"{k}={v}" for k, v in params.items()]
        lines += list(OmegaConf.select(cfg, "hydra.overrides.task", default=None) or [])
        overrides = OverridesParser.create().parse_overrides(lines)
    except (OmegaConfBaseException, OverrideParseException):
        return None  # an unreadable multirun.yaml: the run folders are still reported
    choices = []
    for override in overrides:
        key = override.get_key_element()
        if override.is_discrete_sweep():
            choices.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        elif override.is_sweep_override():
            return None  # range/interval sweeps are not the basic sweeper's
        else:
            choices.append([f"{key}={override.get_value_element_as_str()}"])
    swept = [c for c in choices if len(c) > 1]  # fixed overrides are the same for every job
    return [list(job) for job in itertools.product(*swept)]


def collect(root: Path, exclude: Path | None = None) -> tuple[list[RunRecord], list[MissingJob]]:
    """Every run under ``root`` and the sweep's jobs that have no folder at all.

    Args:
        root: The multirun directory.
        exclude: A folder to ignore (the report's own output).

    Returns:
        The runs (complete or not) and the missing jobs (only known for a basic-sweeper ``multirun.yaml``).
    """
    runs = [load_run(p) for p in find_run_dirs(root, exclude)]
    jobs = expected_jobs(root)
    if jobs is None:
        return runs, []
    present = {job_num(root, r.path) for r in runs}
    missing = [MissingJob(num, overrides) for num, overrides in enumerate(jobs) if num not in present]
    return runs, missing
