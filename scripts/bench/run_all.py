"""Run the quick mode of every long-context benchmark and write ``bench/results.md``.

Each benchmark runs in its own subprocess (fresh allocator, no shared state); their figure lines
(``name ratio=<x> a=<ours> b=<baseline>``) are collected with a description of the machine, followed by
``bench/notes.md`` (what the figures mean, written by hand).

    python scripts/bench/run_all.py                 # quick modes (a few minutes on 2 cores)
    python scripts/bench/run_all.py --full          # full sizes (tens of minutes)
    python scripts/bench/run_all.py --only prefix,logprobs
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import bf16_units

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BENCHES = {
    "prefix": "bench_prefix.py",
    "packing": "bench_packing.py",
    "logprobs": "bench_logprobs.py",
    "generate": "bench_generate.py",
    "peer": "bench_peer.py",
    "sequence_parallel": "bench_sequence_parallel.py",
    "attention": "bench_attention.py",
    "async": "bench_async.py",
    "memory": "bench_memory.py",
    "interleave": "bench_interleave.py",
}
FIGURE = re.compile(r"^\S+ ratio=\S+ a=\S+ b=\S+$")


def machine() -> list[str]:
    """CPU model, cores, memory, torch / transformers versions and the date."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    import transformers

    return [
        f"- CPU: {cpu}, {os.cpu_count()} cores{mem}; load average {os.getloadavg()[0]:.1f} at start",
        f"- CPU bf16 units: {bf16_units()} (without them bf16 autocast is emulated, slower than fp32: "
        "compare bf16-mixed figures only between CPUs of the same kind; each benchmark's `# precision:` "
        "line names what its arms ran)",
        f"- torch {torch.__version__}, transformers {transformers.__version__}, "
        f"Python {platform.python_version()}",
        f"- date: {dt.datetime.now().isoformat(timespec='seconds')}",
    ]


def run(script: str, full: bool, threads: int, timeout: int) -> tuple[list[str], list[str], float, str]:
    """Run one benchmark; returns (figure lines, comment lines, seconds, error text)."""
    start = time.perf_counter()
    cmd = [sys.executable, str(HERE / script)] + ([] if full else ["--quick"])
    cmd += ["--threads", str(threads)] if threads > 0 else []
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return [], [], time.perf_counter() - start, f"timed out after {timeout} s"
    lines = [ln.strip() for ln in out.stdout.splitlines()]
    figures = [ln for ln in lines if FIGURE.match(ln)]
    comments = [ln for ln in lines if ln.startswith("#")]
    error = "" if out.returncode == 0 else f"exit {out.returncode}: {out.stderr.strip()[-1500:]}"
    return figures, comments, time.perf_counter() - start, error


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="full sizes instead of --quick")
    p.add_argument("--only", default=",".join(BENCHES), help="comma-separated subset of " + ",".join(BENCHES))
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per benchmark (0 = torch default). 1 by default: on a shared 2-core machine a "
        "second OpenMP thread makes timings erratic (barrier waits when a core is busy elsewhere)",
    )
    p.add_argument("--timeout", type=int, default=900, help="seconds per benchmark")
    p.add_argument("--out", default=str(ROOT / "bench" / "results.md"))
    args = p.parse_args(argv)
    body = ["# Long-context benchmarks", "", *machine(), f"- mode: {'full' if args.full else 'quick'}"]
    body += [f"- torch threads per benchmark: {args.threads or 'default'}", ""]
    body += [
        "Each line: `name ratio=<x> a=<ours> b=<baseline>` (ratio > 1 = ours better, except "
        "`sp_peak_activation_mb`: N=2 over N=1 per rank, lower is better).",
        "",
    ]
    for key in args.only.split(","):
        figures, comments, seconds, error = run(BENCHES[key], args.full, args.threads, args.timeout)
        print(f"{key}: {seconds:.0f} s {'FAILED ' + error if error else ''}", flush=True)
        for line in figures:
            print("  " + line, flush=True)
        body += [f"## {key} ({BENCHES[key]}, {seconds:.0f} s)", "", "```", *comments, *figures]
        body += [f"ERROR {error}"] if error else []
        body += ["```", ""]
    notes = ROOT / "bench" / "notes.md"  # hand-written reading of the figures, kept across runs
    if notes.is_file():
        body += [notes.read_text()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(body))
    print(f"wrote {out}", flush=True)
    return out


if __name__ == "__main__":
    main()
