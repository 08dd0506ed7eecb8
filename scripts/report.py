"""Ablation report of a Hydra multirun: mean ± std over seeds per algo x masking, plots, missing runs.

Example:
    python train.py -m algo=grpo,dapo masking=saliency,random,inverse,none seed=0,1,2
    python scripts/report.py multirun/train/<date> [--out DIR] [--last-k 5] [--paired]

Writes into ``--out`` (default ``MULTIRUN_DIR/report``): ``report.md`` (the table and a "Missing / crashed"
section), ``reward_curves.png`` and ``acc_vs_length.png``.

``--paired`` adds per-prompt paired comparisons from the runs' ``val_predictions/``: saliency - none and
saliency - random by default (``--paired saliency:none inverse:none`` chooses), each arm's change from
step 0, accuracy and KL per eval point, with bootstrap 95% CIs over prompts and seeds and the smallest
detectable effect; plus ``paired_diffs.png`` and ``acc_by_step.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from longact_pl.reporting import build_report
from longact_pl.reporting.paired_arms import DEFAULT_PAIRS


def parse_pair(text: str) -> tuple[str, str]:
    """``"saliency:none"`` -> ``("saliency", "none")`` (treated, control)."""
    treated, sep, control = text.partition(":")
    if not sep or not treated or not control or treated == control:
        raise argparse.ArgumentTypeError(f"{text!r}: give TREATED:CONTROL maskings, e.g. saliency:none")
    return treated, control


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "multirun_dir", type=Path, help="hydra.sweep.dir of the multirun (or any folder of runs)"
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: MULTIRUN_DIR/report)")
    parser.add_argument("--last-k", type=int, default=5, help="training steps averaged for the final reward")
    parser.add_argument(
        "--paired", nargs="*", type=parse_pair, default=None, metavar="TREATED:CONTROL",
        help="per-prompt paired CIs from val_predictions/ (no value: saliency:none saliency:random)",
    )  # fmt: skip
    parser.add_argument("--n-boot", type=int, default=10_000, help="bootstrap replicates of the paired CIs")
    args = parser.parse_args(argv)
    if args.last_k < 1:
        parser.error(f"--last-k must be >= 1 (steps averaged for the final reward), got {args.last_k}")
    if args.n_boot < 100:
        parser.error(f"--n-boot must be >= 100 bootstrap replicates, got {args.n_boot}")
    if not args.multirun_dir.is_dir():
        parser.error(f"{args.multirun_dir}: not a directory")
    try:
        pairs = None if args.paired is None else (args.paired or list(DEFAULT_PAIRS))
        report = build_report(args.multirun_dir, args.out, args.last_k, pairs, args.n_boot)
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
