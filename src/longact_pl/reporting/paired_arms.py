"""Paired, per-prompt comparisons of a multirun's arms from their ``val_predictions/step_<k>.jsonl`` files.

Two arms (cells of the ablation, e.g. masking=saliency and masking=none) are paired seed by seed: the runs of
one seed share the data order and the initial weights, and every run scores the same held-out prompts (the
files' ``id`` and ``prompt_sha`` are checked, never assumed). ``d[s, p]`` = treated minus control on prompt
``p`` in seed ``s``; :func:`longact_pl.stats.paired_ci` gives the interval over prompts and seeds.

Step 0 (before training) is the same model in every run; a run that skipped it
(``validate_before_training=false``) borrows the step-0 file of another run with the same prompts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from longact_pl.eval.val_records import read_step, step_of
from longact_pl.reporting.collect import RunRecord
from longact_pl.reporting.groups import GroupKey
from longact_pl.stats import Interval, paired_ci

PREDICTIONS = "val_predictions"
# The comparisons --paired makes by default: (treated, control) maskings.
DEFAULT_PAIRS = (("saliency", "none"), ("saliency", "random"))
ALL = "all"

Rows = dict[str, dict]  # prompt id -> row of one step file


@dataclass
class ArmRuns:
    """The runs of one arm (an ablation cell) by seed, with their per-prompt rows by step.

    Attributes:
        key: The cell.
        steps: ``{seed: {step: {id: row}}}``.
    """

    key: GroupKey
    steps: dict[str, dict[int, Rows]] = field(default_factory=dict)


@dataclass(frozen=True)
class PairedRow:
    """One paired comparison: treated minus control in one scope at one step.

    Attributes:
        label: ``"saliency - none"``, or ``"saliency: step 16 - step 0"`` for a run's own movement.
        scope: ``all`` or ``<task>@<length>``.
        step: The evaluation step compared.
        interval: Mean difference and its bootstrap interval.
    """

    label: str
    scope: str
    step: int
    interval: Interval


def load_steps(run_dir: Path) -> dict[int, Rows]:
    """``{step: {id: row}}`` of a run's ``val_predictions/`` (empty when the run wrote none)."""
    folder = run_dir / PREDICTIONS
    if not folder.is_dir():
        return {}
    return {step_of(p): {r["id"]: r for r in read_step(p)} for p in sorted(folder.glob("step_*.jsonl"))}


def _seed(run: RunRecord) -> str:
    return str(run.config.get("seed", "?"))


def load_arms(groups: Mapping[GroupKey, Sequence[RunRecord]]) -> dict[GroupKey, ArmRuns]:
    """Per-prompt rows of every run with ``val_predictions/``; step 0 is borrowed where a run skipped it.

    Raises:
        ValueError: If two runs of one cell have the same seed.
    """
    arms: dict[GroupKey, ArmRuns] = {}
    for key, runs in groups.items():
        arm = ArmRuns(key)
        for run in runs:
            steps = load_steps(run.path)
            if not steps:
                continue
            if _seed(run) in arm.steps:
                raise ValueError(f"cell {key.masking}: two runs with seed {_seed(run)}; cannot pair them")
            arm.steps[_seed(run)] = steps
        if arm.steps:
            arms[key] = arm
    zero = [s[0] for a in arms.values() for s in a.steps.values() if 0 in s]
    for arm in arms.values():
        for steps in arm.steps.values():
            if 0 not in steps:
                shared = next((z for z in zero if _same_prompts(z, steps[max(steps)])), None)
                if shared is not None:
                    steps[0] = shared
    return arms


def _same_prompts(a: Rows, b: Rows) -> bool:
    return a.keys() == b.keys() and all(a[i].get("prompt_sha") == b[i].get("prompt_sha") for i in a)


def _scope(row: dict) -> str:
    return f"{row['task']}@{row['target_length']}"


def check_prompts(tables: Sequence[Rows], names: Sequence[str]) -> list[str]:
    """The common prompt ids, sorted, after checking every table holds the same prompts.

    Raises:
        ValueError: Naming the first table whose ids or prompt digests differ from the first one's.
    """
    first = tables[0]
    for table, name in zip(tables[1:], names[1:]):
        if table.keys() != first.keys():
            only = sorted(set(table) ^ set(first))[:3]
            raise ValueError(
                f"{name} and {names[0]} scored different held-out prompts (e.g. {only}); a paired comparison "
                "needs the same data.val (seed, task, lengths, num_samples) in every run"
            )
        bad = [i for i in first if first[i].get("prompt_sha") != table[i].get("prompt_sha")]
        if bad:
            raise ValueError(
                f"{name} and {names[0]}: prompt {bad[0]} has different token ids (another tokenizer, "
                "template or data.max_prompt_tokens?); a paired comparison needs identical prompts"
            )
    return sorted(first)


def _intervals(
    label: str, step: int, tables: list[tuple[Rows, Rows]], names: list[tuple[str, str]], n_boot: int
) -> list[PairedRow]:
    """Rows for ``all`` and each task@length scope: treated minus control, one (treated, control) per seed."""
    ids = check_prompts([t for pair in tables for t in pair], [n for pair in names for n in pair])
    diffs = np.array([[t[i]["score"] - c[i]["score"] for i in ids] for t, c in tables])  # [S, P]
    scopes = [_scope(tables[0][0][i]) for i in ids]
    rows = [PairedRow(label, ALL, step, paired_ci(diffs, strata=scopes, n_boot=n_boot))]
    if len(set(scopes)) > 1:
        for scope in sorted(set(scopes), key=lambda s: (s.split("@")[0], int(s.rsplit("@", 1)[1]))):
            cols = [j for j, s in enumerate(scopes) if s == scope]
            rows.append(PairedRow(label, scope, step, paired_ci(diffs[:, cols], n_boot=n_boot)))
    return rows


def common_steps(arms: Sequence[ArmRuns], seeds: Sequence[str]) -> list[int]:
    """Evaluation steps every run of ``arms`` has for ``seeds``."""
    sets = [set(a.steps[s]) for a in arms for s in seeds]
    return sorted(set.intersection(*sets)) if sets else []


def compare_arms(treated: ArmRuns, control: ArmRuns, n_boot: int = 10_000) -> list[PairedRow]:
    """Treated minus control at every common step, over the seeds both arms ran.

    Raises:
        ValueError: If the arms share no seed or no step, or their prompts differ.
    """
    seeds = sorted(set(treated.steps) & set(control.steps), key=lambda s: (len(s), s))
    if not seeds:
        raise ValueError(f"{treated.key.masking} and {control.key.masking} share no seed")
    label = f"{treated.key.masking} - {control.key.masking}"
    rows = []
    for step in common_steps([treated, control], seeds):
        tables = [(treated.steps[s][step], control.steps[s][step]) for s in seeds]
        names = [(f"{treated.key.masking} seed {s}", f"{control.key.masking} seed {s}") for s in seeds]
        rows += _intervals(label, step, tables, names, n_boot)
    return rows


def movement(arm: ArmRuns, n_boot: int = 10_000) -> list[PairedRow]:
    """An arm's own change from step 0 at its last common step (per prompt, over its seeds)."""
    seeds = sorted(arm.steps, key=lambda s: (len(s), s))
    steps = common_steps([arm], seeds)
    if 0 not in steps or steps[-1] == 0:
        return []
    last = steps[-1]
    tables = [(arm.steps[s][last], arm.steps[s][0]) for s in seeds]
    names = [(f"{arm.key.masking} seed {s} step {last}", f"{arm.key.masking} seed {s} step 0") for s in seeds]
    return _intervals(f"{arm.key.masking}: step {last} - step 0", last, tables, names, n_boot)


def accuracy_by_step(arm: ArmRuns) -> dict[int, dict[str, float]]:
    """``{step: {scope: mean score}}`` over the arm's seeds and prompts (``all`` and each task@length)."""
    out: dict[int, dict[str, float]] = {}
    for step in common_steps([arm], list(arm.steps)):
        rows = [r for steps in arm.steps.values() for r in steps[step].values()]
        scopes: dict[str, list[float]] = {ALL: [r["score"] for r in rows]}
        for r in rows:
            scopes.setdefault(_scope(r), []).append(r["score"])
        out[step] = {k: float(np.mean(v)) for k, v in scopes.items()}
    return out
