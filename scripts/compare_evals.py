"""Compare evaluation summaries side by side: a markdown table with deltas vs the first, and a bar chart.

    python scripts/compare_evals.py outputs/eval/A/summary.json outputs/eval/B/summary.json \
        --names base longact --out outputs/compare

Writes ``DIR/comparison.md`` (every score) and ``DIR/comparison.png`` (the headline scores: per-length
averages and overall for RULER, overall / easy / hard / short / medium / long for LongBench v2).

Each delta comes with a paired bootstrap 95% CI over the prompts (from the ``predictions.jsonl`` beside each
``summary.json``; the evaluations must have scored the same prompts, i.e. the same benchmark settings and
``eval.seed``), and ✱ marks a row whose CI excludes 0. Without the predictions, or with different prompts,
the deltas are printed without CIs and a warning says why.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from longact_pl.eval.benchmark_plots import plot_comparison
from longact_pl.eval.paired_evals import intervals_vs_first
from longact_pl.stats import Interval


def load(path: Path) -> dict:
    """Read a ``summary.json`` written by ``evaluate.py``.

    Raises:
        SystemExit: If the file is missing or is not an evaluation summary.
    """
    if not path.is_file():
        raise SystemExit(f"{path}: no such file; pass the summary.json of an evaluate.py run")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SystemExit(f"{path}: not valid JSON ({err.msg})") from None
    except UnicodeDecodeError as err:
        raise SystemExit(
            f"{path}: not a text file (byte {err.start} is not UTF-8): the summary is corrupt; rerun "
            "evaluate.py or pass another summary.json"
        ) from None
    if not isinstance(summary, dict) or not isinstance(summary.get("scores"), dict):
        raise SystemExit(f"{path}: not an evaluate.py summary (no 'scores' field)")
    return summary


def _cell(value: float | None, base: float | None, first: bool, ci: Interval | None = None) -> str:
    if value is None:
        return "-"
    if first or base is None:
        return f"{value:.1f}"
    if ci is None:
        return f"{value:.1f} ({value - base:+.1f})"
    mark = " ✱" if ci.excludes_zero else ""
    return f"{value:.1f} ({value - base:+.1f} [{ci.lo:+.1f}, {ci.hi:+.1f}]{mark})"


def compare(
    summaries: list[dict], names: list[str], intervals: list[dict[str, Interval]] | None = None
) -> tuple[str, list[str], dict[str, list]]:
    """Markdown table of every score (deltas vs the first run, with their CIs when given), the headline keys
    and the value table."""
    keys: list[str] = []
    for s in summaries:
        keys += [k for k in s["scores"] if k not in keys]
    table = {k: [s["scores"].get(k) for s in summaries] for k in keys}
    headline: list[str] = []
    for s in summaries:
        headline += [k for k in s.get("headline", []) if k not in headline]
    benchmarks = sorted({str(s.get("benchmark")) for s in summaries})
    intervals = intervals or [{} for _ in summaries]
    lines = [f"# Comparison ({', '.join(benchmarks)}); deltas vs {names[0]}", ""]
    if any(intervals):
        lines += [
            "Deltas with a paired bootstrap 95% CI over the prompts (same prompts in every evaluation); "
            "✱: the CI excludes 0.",
            "",
        ]
    lines += ["| score | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for k in keys:
        row = table[k]
        cells = [_cell(v, row[0], i == 0, intervals[i].get(k)) for i, v in enumerate(row)]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    effective = [s.get("effective_length") for s in summaries]
    if any(e is not None for e in effective):
        lines.append("| effective length | " + " | ".join(str(e or "-") for e in effective) + " |")
    return "\n".join(lines) + "\n", headline, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("summaries", nargs="+", type=Path, help="summary.json files; the first is the base")
    parser.add_argument("--names", nargs="+", help="one name per summary (default: the run folder names)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (.md and .png)")
    parser.add_argument("--n-boot", type=int, default=10_000, help="bootstrap replicates of the paired CIs")
    args = parser.parse_args(argv)
    names = args.names or [p.parent.name for p in args.summaries]
    if len(names) != len(args.summaries):
        parser.error(f"--names gives {len(names)} names for {len(args.summaries)} summaries; one per summary")
    summaries = [load(p) for p in args.summaries]
    benchmarks = {str(s.get("benchmark")): p for s, p in zip(summaries, args.summaries)}
    if len(benchmarks) > 1:  # a RULER score and a LongBench v2 accuracy are not the same metric
        mixed = ", ".join(f"{b} ({p})" for b, p in benchmarks.items())
        parser.error(f"the summaries come from different benchmarks: {mixed}; compare one benchmark at once")
    try:
        intervals, warnings = intervals_vs_first(args.summaries, summaries, args.n_boot)
    except ValueError as err:  # a malformed predictions.jsonl
        parser.error(str(err))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    markdown, headline, table = compare(summaries, names, intervals)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "comparison.md").write_text(markdown)
    plot_comparison(names, headline, table, args.out / "comparison.png")
    print(markdown)
    print(f"wrote {args.out / 'comparison.md'} and {args.out / 'comparison.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
