"""Compare evaluation summaries side by side: a markdown table with deltas vs the first, and a bar chart.

    python scripts/compare_evals.py outputs/eval/A/summary.json outputs/eval/B/summary.json \
        --names base longact --out outputs/compare

Writes ``DIR/comparison.md`` (every score) and ``DIR/comparison.png`` (the headline scores: per-length
averages and overall for RULER, overall / easy / hard / short / medium / long for LongBench v2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from longact_pl.eval.plots import plot_comparison


def load(path: Path) -> dict:
    """Read a ``summary.json`` written by ``evaluate.py``.

    Raises:
        SystemExit: If the file is missing or is not an evaluation summary.
    """
    if not path.is_file():
        raise SystemExit(f"{path}: no such file; pass the summary.json of an evaluate.py run")
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SystemExit(f"{path}: not valid JSON ({err.msg})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("scores"), dict):
        raise SystemExit(f"{path}: not an evaluate.py summary (no 'scores' field)")
    return summary


def _cell(value: float | None, base: float | None, first: bool) -> str:
    if value is None:
        return "-"
    if first or base is None:
        return f"{value:.1f}"
    return f"{value:.1f} ({value - base:+.1f})"


def compare(summaries: list[dict], names: list[str]) -> tuple[str, list[str], dict[str, list]]:
    """Markdown table of every score (deltas vs the first run), the headline keys and the value table."""
    keys: list[str] = []
    for s in summaries:
        keys += [k for k in s["scores"] if k not in keys]
    table = {k: [s["scores"].get(k) for s in summaries] for k in keys}
    headline: list[str] = []
    for s in summaries:
        headline += [k for k in s.get("headline", []) if k not in headline]
    benchmarks = sorted({str(s.get("benchmark")) for s in summaries})
    lines = [
        f"# Comparison ({', '.join(benchmarks)}); deltas vs {names[0]}",
        "",
        "| score | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for k in keys:
        row = table[k]
        lines.append(f"| {k} | " + " | ".join(_cell(v, row[0], i == 0) for i, v in enumerate(row)) + " |")
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
    args = parser.parse_args(argv)
    names = args.names or [p.parent.name for p in args.summaries]
    if len(names) != len(args.summaries):
        parser.error(f"--names gives {len(names)} names for {len(args.summaries)} summaries; one per summary")
    summaries = [load(p) for p in args.summaries]
    benchmarks = {str(s.get("benchmark")): p for s, p in zip(summaries, args.summaries)}
    if len(benchmarks) > 1:  # a RULER score and a LongBench v2 accuracy are not the same metric
        mixed = ", ".join(f"{b} ({p})" for b, p in benchmarks.items())
        parser.error(f"the summaries come from different benchmarks: {mixed}; compare one benchmark at once")
    markdown, headline, table = compare(summaries, names)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "comparison.md").write_text(markdown)
    plot_comparison(names, headline, table, args.out / "comparison.png")
    print(markdown)
    print(f"wrote {args.out / 'comparison.md'} and {args.out / 'comparison.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
