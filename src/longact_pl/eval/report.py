"""Summaries of an evaluation: effective length, the ``summary.json`` dict, and markdown tables.

Every summary has ``benchmark``, ``overall``, a flat ``scores`` dict (``name -> percent``) and ``headline``
(the keys worth a bar chart); ``scripts/compare_evals.py`` only relies on those.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

DIFFICULTIES = ("easy", "hard")
LENGTH_SPLITS = ("short", "medium", "long")


def effective_length(averages: Mapping[int, float], threshold: float) -> int | None:
    """The largest length up to which every tested length scores strictly above ``threshold``.

    RULER's effective length: the score must stay above the threshold (e.g. 85.6, Llama-2-7B at 4k) from the
    shortest tested length on; a dip stops the count even if a longer length recovers.

    Args:
        averages: Per-length average score (percent), keyed by length in tokens.
        threshold: The score to beat.

    Returns:
        The effective length, or ``None`` when even the shortest length is at or below the threshold.
    """
    best = None
    for length in sorted(averages):
        if not averages[length] > threshold:
            break
        best = length
    return best


def _pct(value: torch.Tensor | float) -> float:
    return round(100.0 * float(value), 4)


def ruler_summary(
    computed: Mapping[str, torch.Tensor],
    tasks: Sequence[str],
    lengths: Sequence[int],
    threshold: float,
    **info,
) -> dict:
    """Build the RULER summary from :class:`~longact_pl.eval.accuracy.TaskLengthAccuracy` output.

    Args:
        computed: ``metric.compute()`` (scores in ``[0, 1]``).
        tasks: Task names in report order.
        lengths: Lengths in report order.
        threshold: Effective-length threshold in percent.
        **info: Extra fields stored as they are (model, n, decoding, ...).
    """
    table = {
        t: {str(n): _pct(computed[f"acc/{t}/{n}"]) for n in lengths if f"acc/{t}/{n}" in computed}
        for t in tasks
    }
    average = {str(n): _pct(computed[f"acc/{n}"]) for n in lengths if f"acc/{n}" in computed}
    overall = _pct(computed["acc"]) if "acc" in computed else float("nan")
    eff = effective_length({int(n): v for n, v in average.items()}, threshold)
    scores = {f"avg@{n}": v for n, v in average.items()}
    scores.update({f"{t}@{n}": v for t, row in table.items() for n, v in row.items()})
    scores["overall"] = overall
    return {
        "benchmark": "ruler",
        **info,
        "lengths": [int(n) for n in lengths],
        "tasks": table,
        "average": average,
        "overall": overall,
        "threshold": threshold,
        "effective_length": eff,
        "scores": scores,
        "headline": [f"avg@{n}" for n in average] + ["overall"],
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def ruler_markdown(summary: Mapping) -> str:
    """RULER tables: task x length, the per-length average, overall and effective length."""
    lengths = [str(n) for n in summary["lengths"]]
    lines = [
        f"# RULER: {summary.get('model', '')}",
        "",
        f"{summary.get('n', '?')} samples per task and length, {summary.get('decoding', '')}; "
        "scores are string-match x100.",
        "",
        "| task | " + " | ".join(lengths) + " |",
        "|---|" + "---:|" * len(lengths),
    ]
    for task, row in summary["tasks"].items():
        lines.append(f"| {task} | " + " | ".join(_fmt(row.get(n)) for n in lengths) + " |")
    avg = summary["average"]
    lines.append("| **average** | " + " | ".join(f"**{_fmt(avg.get(n))}**" for n in lengths) + " |")
    skipped: dict[str, int] = {}
    for s in summary.get("skipped", []):
        skipped[f"{s['task']}@{s['length']}"] = skipped.get(f"{s['task']}@{s['length']}", 0) + 1
    if skipped:
        cells = ", ".join(f"{k} ({v} of {summary.get('n', '?')} samples)" for k, v in skipped.items())
        lines += ["", f"Skipped (the prompt could not be fitted to the length): {cells}."]
    for n in lengths:
        have = sum(n in row for row in summary["tasks"].values())
        if n in avg and have < len(summary["tasks"]):
            lines.append(f"The average at {n} covers {have} of {len(summary['tasks'])} tasks.")
    eff = summary["effective_length"]
    eff_text = (
        str(eff) if eff is not None else f"none (the shortest length is not above {summary['threshold']})"
    )
    lines += [
        "",
        f"Overall average: **{_fmt(summary['overall'])}**",
        "",
        f"Effective length (every length up to it scores > {summary['threshold']}): **{eff_text}**",
        "",
    ]
    return "\n".join(lines)


def longbench_summary(rows: Sequence[Mapping], **info) -> dict:
    """Accuracy (percent) overall, by difficulty and by length split, from prediction rows.

    Args:
        rows: Prediction rows with ``score`` (percent), ``difficulty``, ``length`` and ``answer``.
        **info: Extra fields stored as they are.
    """

    def acc(selected: list[Mapping]) -> float | None:
        return round(sum(r["score"] for r in selected) / len(selected), 4) if selected else None

    by_difficulty = {d: acc([r for r in rows if r["difficulty"] == d]) for d in DIFFICULTIES}
    by_length = {s: acc([r for r in rows if r["length"] == s]) for s in LENGTH_SPLITS}
    counts = {"overall": len(rows)}
    counts.update({d: sum(r["difficulty"] == d for r in rows) for d in DIFFICULTIES})
    counts.update({s: sum(r["length"] == s for r in rows) for s in LENGTH_SPLITS})
    overall = acc(list(rows))
    scores = {"overall": overall, **by_difficulty, **by_length}
    scores = {k: v for k, v in scores.items() if v is not None}
    return {
        "benchmark": "longbench_v2",
        **info,
        "overall": overall,
        "by_difficulty": by_difficulty,
        "by_length": by_length,
        "counts": counts,
        "no_answer": sum(r["answer"] is None for r in rows),
        "scores": scores,
        "headline": list(scores),
    }


def longbench_markdown(summary: Mapping) -> str:
    """LongBench v2 table: accuracy overall, easy/hard, short/medium/long, with counts."""
    cols = ["overall", *DIFFICULTIES, *LENGTH_SPLITS]
    values = {"overall": summary["overall"], **summary["by_difficulty"], **summary["by_length"]}
    counts = summary["counts"]
    return "\n".join(
        [
            f"# LongBench v2: {summary.get('model', '')}",
            "",
            f"{counts['overall']} questions, {summary.get('decoding', '')}, "
            f"prompt: {summary.get('prompt', '')}; accuracy in percent.",
            "",
            "| | " + " | ".join(c.capitalize() for c in cols) + " |",
            "|---|" + "---:|" * len(cols),
            "| accuracy | " + " | ".join(_fmt(values[c]) for c in cols) + " |",
            "| questions | " + " | ".join(str(counts[c]) for c in cols) + " |",
            "",
            f"No extractable answer (counted wrong): {summary['no_answer']}",
            "",
        ]
    )


def write_summary(summary: Mapping, markdown: str, run_dir: Path) -> list[Path]:
    """Write ``summary.json`` and ``summary.md`` into ``run_dir``; return their paths."""
    json_path, md_path = run_dir / "summary.json", run_dir / "summary.md"
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    md_path.write_text(markdown)
    return [json_path, md_path]
