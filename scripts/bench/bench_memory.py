"""Planned vs measured peak memory of a training step: the memory plan (``longact_pl.memory``) on the CPU.

Each case (``longact_pl.memory.cases``: a tiny Qwen3 up to SmolLM2-135M at 4k tokens, random-initialised,
bf16-mixed and fp32, with and without checkpointing) runs one GRPO update through the learner, the packed
shared-prompt pass and the chunked LM head in a fresh subprocess; the measure is the process's peak resident
memory above the parameters (``VmHWM``, glibc told to return freed memory), the plan's is its peak minus its
``parameters`` term. Goal: every ratio within 0.85-1.15.

    python scripts/bench/bench_memory.py            # every case (~1-3 min on 2 cores)
    python scripts/bench/bench_memory.py --quick    # the two smallest

Prints ``memory_<case> ratio=<planned/measured> a=<planned MiB> b=<measured MiB>``. The CUDA counterpart is
``scripts/gpu_check.py``'s planned vs measured (``torch.cuda.max_memory_allocated``) column.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from longact_pl.memory.cases import CASES
from longact_pl.memory.measure import MALLOC_ENV

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the two smallest cases")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    cases = CASES[:2] if args.quick else CASES
    env = {**os.environ, **MALLOC_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "longact_pl.memory.measure", json.dumps(cases), str(args.threads)]
    print(
        f"# planned vs measured peak above the parameters, CPU, {len(cases)} cases, {args.threads} thread(s)"
    )
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode:
        print(out.stderr[-3000:], file=sys.stderr)
        return out.returncode
    worst = 0.0
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            ratio = r["planned"] / r["measured"]
            worst = max(worst, abs(ratio - 1))
            planned, measured = r["planned"] / 2**20, r["measured"] / 2**20
            print(f"memory_{r['name']} ratio={ratio:.3f} a={planned:.0f} b={measured:.0f}")
    print(f"# largest deviation {worst:.1%} (goal: within 15%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
