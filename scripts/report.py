"""Ablation report of a Hydra multirun: mean ± std over seeds per algo x masking, plots, missing runs.

Example:
    python train.py -m algo=grpo,dapo masking=saliency,random,inverse,none seed=0,1,2
    python scripts/report.py multirun/train/<date> [--out DIR] [--last-k 5]

Writes into ``--out`` (default ``MULTIRUN_DIR/report``): ``report.md`` (the table and a "Missing / crashed"
section), ``reward_curves.png`` and ``acc_vs_length.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from longact_pl.reporting import build_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "multirun_dir", type=Path, help="hydra.sweep.dir of the multirun (or any folder of runs)"
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: MULTIRUN_DIR/report)")
    parser.add_argument("--last-k", type=int, default=5, help="training steps averaged for the final reward")
    args = parser.parse_args(argv)
    if args.last_k < 1:
        parser.error(f"--last-k must be >= 1 (steps averaged for the final reward), got {args.last_k}")
    if not args.multirun_dir.is_dir():
        parser.error(f"{args.multirun_dir}: not a directory")
    try:
        report = build_report(args.multirun_dir, args.out, args.last_k)
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 1
    complete = sum(len(v) for v in report.groups.values())
    print(f"{report.markdown}: {complete} complete runs in {len(report.groups)} cells")
    problems = len(report.incomplete) + len(report.never_started)
    if problems:
        print(f"{problems} runs missing or crashed: see the 'Missing / crashed' section", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
