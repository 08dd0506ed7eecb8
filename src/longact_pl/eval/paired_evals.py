"""Paired bootstrap CIs for ``scripts/compare_evals.py``: each summary row's difference, prompt by prompt.

``evaluate.py`` writes ``predictions.jsonl`` (one row per prompt and sample) beside ``summary.json``. Two
evaluations with the same benchmark settings and ``eval.seed`` score the same prompts under the same ids, so a
summary row's difference (e.g. RULER ``niah_multiquery@4096``) is a mean of per-prompt differences and gets a
bootstrap interval over those prompts (:func:`longact_pl.stats.paired_ci`, one "seed"). Every summary row is
a weighted mean of per-cell means, and the interval resamples prompts within the cells:

* RULER ``<task>@<n>``: the prompts of that cell; ``avg@<n>``: the mean over the tasks at ``n``; ``overall``:
  the mean over lengths of those averages (as ``longact_pl.eval.report.ruler_summary`` computes them).
* LongBench v2 ``overall`` / ``easy`` / ``hard`` / ``short`` / ``medium`` / ``long``: the plain mean over the
  questions of that split.
* DocQA ``<source>``: the questions of that source; ``overall``: the mean over sources of those means.

Prompts are checked to be the same (ids and references) before any interval is computed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from longact_pl.eval.val_records import read_scored_rows
from longact_pl.stats import Interval, paired_ci

PREDICTIONS = "predictions.jsonl"
LONGBENCH_SPLITS = {"easy": "difficulty", "hard": "difficulty", "short": "length", "medium": "length",
                    "long": "length"}  # fmt: skip

Prompts = dict[str, dict]  # id -> {"score": mean over samples (percent), "cell": ..., "answer_key": ...}


def load_prompts(summary_path: Path) -> Prompts | None:
    """Per-prompt scores from the ``predictions.jsonl`` beside a ``summary.json`` (``None``: no such file).

    Samples of one prompt (sampled decoding) are averaged, as the summary's means weigh every prompt alike.

    Raises:
        ValueError: On a line that is not a prediction row, naming file and line.
    """
    path = summary_path.parent / PREDICTIONS
    if not path.is_file():
        return None
    prompts: dict[str, dict] = {}
    for row in read_scored_rows(path, "a prediction row"):
        entry = prompts.setdefault(str(row["id"]), {"scores": [], "row": row})
        entry["scores"].append(float(row["score"]))
    return {
        i: {
            "score": sum(e["scores"]) / len(e["scores"]),
            "row": e["row"],
            # what makes two prompts with one id the same prompt: its answers (and its length, when given)
            "answer_key": json.dumps(
                [e["row"].get("references", e["row"].get("gold")), e["row"].get("prompt_tokens")]
            ),  # fmt: skip
        }
        for i, e in prompts.items()
    }


def same_prompts(base: Prompts, other: Prompts) -> str | None:
    """``None`` when both hold the same prompts, else why not (for a warning)."""
    if base.keys() != other.keys():
        diff = sorted(set(base) ^ set(other))
        return f"{len(diff)} prompt ids are in one evaluation only (e.g. {diff[0]})"
    bad = [i for i in base if base[i]["answer_key"] != other[i]["answer_key"]]
    if bad:
        return f"prompt {bad[0]} has other answers or length (another eval.seed?)"
    return None


def cells_of(benchmark: str, key: str, prompts: Prompts) -> tuple[dict[str, str], dict[str, float]] | None:
    """The prompts of summary row ``key`` with their cell, and each cell's weight (``None``: unknown row)."""
    rows = {i: p["row"] for i, p in prompts.items()}
    if benchmark == "ruler":
        task, _, length = key.rpartition("@")
        if key == "overall":
            chosen = {i: f"{r['task']}@{r['length']}" for i, r in rows.items()}
        elif length.isdigit():
            chosen = {
                i: f"{r['task']}@{r['length']}"
                for i, r in rows.items()
                if str(r["length"]) == length and (task == "avg" or r["task"] == task)
            }
        else:
            return None
        lengths: dict[str, set[str]] = {}
        for cell in set(chosen.values()):
            name, _, n = cell.rpartition("@")
            lengths.setdefault(n, set()).add(name)
        weights = {
            cell: 1.0 / (len(lengths) * len(lengths[cell.rpartition("@")[2]]))
            for cell in set(chosen.values())
        }
        return chosen, weights
    if benchmark == "longbench_v2":
        if key == "overall":
            chosen = {i: "all" for i in rows}
        elif key in LONGBENCH_SPLITS:
            chosen = {i: key for i, r in rows.items() if r.get(LONGBENCH_SPLITS[key]) == key}
        else:
            return None
        return chosen, {c: 1.0 for c in set(chosen.values())}
    if benchmark == "docqa":  # overall: the mean over sources of each source's mean
        chosen = {i: r["task"] for i, r in rows.items() if key == "overall" or r["task"] == key}
        return (
            (chosen, {c: 1.0 / len(set(chosen.values())) for c in set(chosen.values())}) if chosen else None
        )
    return None


def row_interval(
    benchmark: str, key: str, base: Prompts, other: Prompts, n_boot: int = 10_000
) -> Interval | None:
    """Bootstrap interval of ``other - base`` for summary row ``key`` (percent; ``None``: not computable)."""
    found = cells_of(benchmark, key, base)
    if found is None or not found[0]:
        return None
    chosen, weights = found
    ids = sorted(chosen)
    diffs = [[other[i]["score"] - base[i]["score"] for i in ids]]  # [1, P]
    return paired_ci(diffs, strata=[chosen[i] for i in ids], weights=weights, n_boot=n_boot)


def row_intervals(
    benchmark: str, keys: list[str], base: Prompts, other: Prompts, n_boot: int = 10_000
) -> Mapping[str, Interval]:
    """:func:`row_interval` of every key that has one."""
    out = {}
    for key in keys:
        ci = row_interval(benchmark, key, base, other, n_boot)
        if ci is not None:
            out[key] = ci
    return out


def intervals_vs_first(
    paths: list[Path], summaries: list[dict], n_boot: int = 10_000
) -> tuple[list[dict[str, Interval]], list[str]]:
    """Per-row CIs of every summary against the first (``{}`` where none), and warnings saying why not.

    Args:
        paths: The ``summary.json`` files (their folders hold ``predictions.jsonl``).
        summaries: Their contents.
        n_boot: Bootstrap replicates.

    Raises:
        ValueError: On a malformed ``predictions.jsonl``.
    """
    keys = list(dict.fromkeys(k for s in summaries for k in s["scores"]))
    prompts = [load_prompts(p) for p in paths]
    out: list[dict[str, Interval]] = [{}]
    warnings = []
    if prompts[0] is None:
        warnings.append(f"no predictions.jsonl beside {paths[0]}: deltas without CIs")
    for path, summary, other in zip(paths[1:], summaries[1:], prompts[1:]):
        if prompts[0] is None:
            out.append({})
            continue
        if other is None:
            warnings.append(f"no predictions.jsonl beside {path}: its deltas have no CI")
            out.append({})
            continue
        why = same_prompts(prompts[0], other)
        if why is not None:
            warnings.append(f"{path} and {paths[0]} scored different prompts ({why}): no paired CIs")
            out.append({})
            continue
        out.append(dict(row_intervals(str(summary.get("benchmark")), keys, prompts[0], other, n_boot)))
    return out, warnings
