"""Run the parity matrix (tests/parity.py) and print its table; ``--write-docs`` also updates docs/parity.md.

Every configuration of a strength-2 covering design over packing, token budgets, micro-batches below the
group, sequence parallelism, data parallelism, mask refresh, entropy bonus, rollout correction and PPO
epochs trains 2 steps through ``train.py`` on CPU (gloo), and is compared with one padded process:

    .venv/bin/python scripts/parity_matrix.py [--out /tmp/parity] [--write-docs]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.parity import covering_design, run_matrix, table  # noqa: E402

DOC = ROOT / "docs" / "parity.md"
MARK = "<!-- parity-table -->"


def main() -> int:
    """Run, print the table, optionally write it into docs/parity.md; exit 1 if a row fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="run folders (default: a temporary folder)")
    parser.add_argument("--write-docs", action="store_true", help="replace the table in docs/parity.md")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="parity-"))
    start = time.perf_counter()
    verdicts = run_matrix(out, covering_design(), log=lambda m: print(m, flush=True))
    minutes = (time.perf_counter() - start) / 60
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True)
    stamp = f"commit {commit}{' (src/ modified)' if dirty.stdout.strip() else ''}, {minutes:.1f} min"
    text = f"{table(verdicts)}\n\nRan at {stamp}; {sum(v.passed for v in verdicts)}/{len(verdicts)} PASS."
    print(text)
    if args.write_docs:
        doc = DOC.read_text()
        head, _, rest = doc.partition(MARK)
        _, _, tail = rest.partition(MARK)
        DOC.write_text(f"{head}{MARK}\n{text}\n{MARK}{tail}")
    return 0 if all(v.passed for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
