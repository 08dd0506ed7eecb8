"""Chunked LM-head log-probs vs the full ``[N, C, V]`` logits: time and peak memory of forward + backward.

Each variant runs in its own subprocess (a fresh allocator), under bf16 autocast, with gradient checkpointing
(``--no-ckpt`` to disable; then activations dominate and the head's share of the peak shrinks):

* full (b): ``completion_logprobs`` (logits of the C completion positions at once, ``logits_to_keep``);
* chunked (a): ``chunked_completion_logprobs`` (``--chunk`` tokens per LM-head chunk, recomputed in backward).

Memory = peak resident set size (RSS, sampled every 1 ms with psutil) during the first forward + backward,
minus the RSS just before it. It counts everything the process touches (torch's CPU allocator returns memory
to malloc), so it is an upper-level figure, not an exact tensor tally; the model and inputs are excluded.
Time = median of ``--reps`` later runs.

    python scripts/bench/bench_logprobs.py            # SmolLM2, N=4, P=512, C=512
    python scripts/bench/bench_logprobs.py --quick    # tiny Llama, N=4, P=128, C=256

Prints ``logprobs_peak_rss_mb ratio=<b/a> a=<MB chunked> b=<MB full>`` and
``logprobs_step_s ratio=<b/a> a=<s chunked> b=<s full>``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
from _common import (
    BF16_MIXED,
    PeakRSS,
    figure,
    load,
    median_time,
    precision_line,
    set_threads,
    synthetic_groups,
)

from longact_pl.ops.chunked import chunked_completion_logprobs
from longact_pl.ops.logprobs import completion_logprobs


def run_variant(args: argparse.Namespace) -> dict:
    """Measure one variant in this process; returns ``{"peak_mb", "seconds"}``."""
    set_threads(args.threads)
    model = load(args.model, gradient_checkpointing=not args.no_ckpt).model.train()
    ids, mask = synthetic_groups(model.config.vocab_size, 1, args.rows, args.prompt, args.completion)
    comp = mask[:, -args.completion :].float()  # [N, C]

    def step() -> None:
        with torch.autocast("cpu", torch.bfloat16):
            if args.variant == "chunked":
                logp, ent = chunked_completion_logprobs(
                    model, ids, mask, args.completion, 0.7, True, chunk_size=args.chunk
                )
            else:
                logp, ent = completion_logprobs(model, ids, mask, args.completion, 0.7, True)
            (-(logp * comp).sum() / comp.sum()).backward()
        model.zero_grad(set_to_none=True)

    with PeakRSS() as rss:
        step()
    return {"peak_mb": rss.peak_mb, "seconds": median_time(step, args.reps, warmup=0)}


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny model, small sizes")
    p.add_argument("--model", default=None, help="smollm2 | small_llama | tiny_llama | tiny_qwen3")
    p.add_argument("--rows", type=int, default=None, help="N sequences")
    p.add_argument("--prompt", type=int, default=None, help="P")
    p.add_argument("--completion", type=int, default=None, help="C")
    p.add_argument("--chunk", type=int, default=512, help="tokens per LM-head chunk")
    p.add_argument("--no-ckpt", action="store_true", help="disable gradient checkpointing (both variants)")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--variant", choices=["full", "chunked"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.model = args.model or ("tiny_llama" if args.quick else "smollm2")
    args.rows = args.rows or 4
    args.prompt = args.prompt or (128 if args.quick else 512)
    args.completion = args.completion or (256 if args.quick else 512)
    if args.variant:
        print(json.dumps(run_variant(args)), flush=True)
        return []
    forward = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--quick"]
    forward += ["--model", args.model, "--rows", str(args.rows), "--prompt", str(args.prompt)]
    forward += ["--completion", str(args.completion)]
    res = {}
    for variant in ("chunked", "full"):
        out = subprocess.run(
            [sys.executable, __file__, *forward, "--variant", variant],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        res[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"# model={args.model} N={args.rows} P={args.prompt} C={args.completion} chunk={args.chunk} "
        f"ckpt={not args.no_ckpt} bf16_autocast=True; memory = peak RSS increase during fwd+bwd (MB)",
        flush=True,
    )
    precision_line(dict.fromkeys(("chunked", "full"), BF16_MIXED))
    a, b = res["chunked"], res["full"]
    tag = "quick" if args.quick else f"{args.model}_N{args.rows}_C{args.completion}"
    return [
        figure(
            f"logprobs_peak_rss_mb[{tag}]", b["peak_mb"] / max(a["peak_mb"], 1e-9), a["peak_mb"], b["peak_mb"]
        ),
        figure(f"logprobs_step_s[{tag}]", b["seconds"] / a["seconds"], a["seconds"], b["seconds"]),
    ]


if __name__ == "__main__":
    main()
