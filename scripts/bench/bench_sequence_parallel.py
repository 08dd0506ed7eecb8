"""Per-rank peak activation memory of one forward + backward at a long prompt: Ulysses N=2 vs N=1.

One GRPO group (a ``--prompt``-token prompt shared by ``--group`` completions of ``--completion`` tokens) runs
the shared-prefix log-prob pass and the backward of a masked mean of ``logp * advantage``:

* N=1 (b): ``grouped_completion_logprobs`` in one process;
* N=2 (a): ``sp_grouped_completion_logprobs`` on 2 processes (gloo), each holding half of the prompt and of
  the completions; the per-rank figure is the larger of the two ranks' peaks.

Memory = peak resident set size increase (RSS, sampled every 1 ms) during the forward + backward, with the
parameter gradients allocated beforehand, so what is measured is activations, attention buffers and the
all-to-all copies (the model, its gradients and the inputs are excluded). fp32, no gradient checkpointing
(``--ckpt`` turns it on: then only layer inputs are kept, which also split over the ranks).

    python scripts/bench/bench_sequence_parallel.py            # small random Llama (8k vocab), P=8192
    python scripts/bench/bench_sequence_parallel.py --quick    # the same, P=4096

Prints ``sp_peak_activation_mb ratio=<a/b> a=<MB per rank, N=2> b=<MB, N=1>``: lower is better here (the goal
is ratio <= 0.6; the ideal is 0.5).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _common import FP32, figure, load, precision_line, set_threads, synthetic_groups
from bench_logprobs import PeakRSS
from transformers import LlamaConfig, LlamaForCausalLM

from longact_pl.ops.sequence_parallel import SPGroup, enable_ulysses
from longact_pl.ops.sequence_parallel.logprobs import sp_grouped_completion_logprobs
from longact_pl.ops.shared_prefix import grouped_completion_logprobs


def build(name: str, ckpt: bool) -> torch.nn.Module:
    """``small_llama_v8k``: a random 4-layer hidden-256 Llama with an 8k vocabulary (so the transformer, not
    the LM head, holds most of the memory, as in real models); other names as ``_common.load``."""
    if name != "small_llama_v8k":
        return load(name, gradient_checkpointing=ckpt).model
    config = LlamaConfig(
        vocab_size=8192, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=65536, tie_word_embeddings=True,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def measure(args: argparse.Namespace, sp: SPGroup | None) -> dict:
    """Peak RSS increase (MB) and seconds of one forward + backward on this rank."""
    set_threads(args.threads)
    model = build(args.model, args.ckpt).train()
    ids, mask = synthetic_groups(model.config.vocab_size, 1, args.group, args.prompt, args.completion)
    comp = mask[:, -args.completion :].float()  # [G, C]
    adv = torch.linspace(-1, 1, ids.shape[0])[:, None]  # [G, 1]
    for p in model.parameters():  # gradients exist before the measurement: only activations count
        p.grad = torch.zeros_like(p)
    if sp is not None:
        enable_ulysses(model, sp.size)

    def step() -> None:
        if sp is None:
            logp, _ = grouped_completion_logprobs(model, ids, mask, args.completion, args.group, 0.7)
        else:
            logp, _ = sp_grouped_completion_logprobs(
                model, ids, mask, args.completion, sp, 0.7, group_size=args.group
            )
        (-(logp * adv * comp).sum() / comp.sum()).backward()

    if sp is not None:
        dist.barrier()
    start = time.perf_counter()
    with PeakRSS() as rss:
        step()
    return {"peak_mb": rss.peak_mb, "seconds": time.perf_counter() - start}


def _rank(rank: int, args: argparse.Namespace, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=args.size)
    try:
        res = measure(args, SPGroup.of(dist.group.WORLD))
        Path(f"{out}.{rank}").write_text(json.dumps(res))
    finally:
        dist.destroy_process_group()


def run_variant(args: argparse.Namespace) -> dict:
    """N=1 in this process, or N ranks spawned from it; the largest per-rank peak and time."""
    if args.size == 1:
        return measure(args, None)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank")
        mp.spawn(_rank, args=(args, os.path.join(tmp, "init"), out), nprocs=args.size, join=True)
        ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(args.size)]
    return {k: max(r[k] for r in ranks) for k in ("peak_mb", "seconds")}


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller prompt")
    p.add_argument("--model", default="small_llama_v8k", help="small_llama_v8k | small_llama | smollm2 | ...")
    p.add_argument("--prompt", type=int, default=None, help="P")
    p.add_argument("--completion", type=int, default=32, help="C")
    p.add_argument("--group", type=int, default=2, help="G")
    p.add_argument("--ckpt", action="store_true", help="gradient checkpointing (both arms)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.prompt = args.prompt or (4096 if args.quick else 8192)
    if args.size:
        print(json.dumps(run_variant(args)), flush=True)
        return []
    forward = ["--model", args.model, "--prompt", str(args.prompt), "--completion", str(args.completion)]
    forward += ["--group", str(args.group), "--threads", str(args.threads)] + (
        ["--ckpt"] if args.ckpt else []
    )
    res = {}
    for size in (2, 1):  # each in a fresh process (allocator)
        out = subprocess.run(
            [sys.executable, __file__, *forward, "--size", str(size)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},
        )
        res[size] = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"# model={args.model} P={args.prompt} G={args.group} C={args.completion} ckpt={args.ckpt} fp32; "
        f"memory = per-rank peak RSS increase during one fwd+bwd, gradients preallocated (MB); "
        f"seconds N=2/N=1 = {res[2]['seconds']:.2f}/{res[1]['seconds']:.2f}; ratio = N=2 over N=1 "
        "(lower is better, goal <= 0.6)",
        flush=True,
    )
    precision_line({"N=2": FP32, "N=1": FP32})
    a, b = res[2]["peak_mb"], res[1]["peak_mb"]
    tag = "quick" if args.quick else f"{args.model}_P{args.prompt}"
    return [figure(f"sp_peak_activation_mb[{tag}]", a / max(b, 1e-9), a, b)]


if __name__ == "__main__":
    main()
