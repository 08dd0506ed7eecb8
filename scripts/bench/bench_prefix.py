"""Train-step time of shared-prefix group log-probs vs the naive per-row forward.

One "train step" here is forward + backward of a GRPO-shaped loss (masked mean of ``logp * advantage``)
over B groups of G completions that share a P-token prompt, as ``Learner.micro_loss`` does it:

* naive (b): ``completion_logprobs`` on micro-batches of ``--micro`` full rows, gradients accumulated;
* ours (a): ``grouped_completion_logprobs``, one micro-batch per group (the prompt runs once per group).

Both run under ``torch.autocast("cpu", torch.bfloat16)`` (the trainer's ``bf16-mixed``), with the same
gradient-checkpointing setting, interleaved rep by rep. The optimizer step is not timed (identical).

    python scripts/bench/bench_prefix.py            # SmolLM2, P=2048, C=64, G=8, B=1 (minutes)
    python scripts/bench/bench_prefix.py --quick    # small random Llama, P=1024, C=32, G=8

Prints ``prefix_train_step_s ratio=<b/a speedup> a=<s/step ours> b=<s/step naive>``.
"""

from __future__ import annotations

import argparse
import contextlib

import torch
from _common import (
    BF16_MIXED,
    FP32,
    figure,
    interleaved_times,
    load,
    precision_line,
    set_threads,
    synthetic_groups,
)

from longact_pl.ops.logprobs import completion_logprobs
from longact_pl.ops.shared_prefix import grouped_completion_logprobs


def step(model, ids, mask, width, rows, fn) -> None:
    """Forward + backward of ``-mean(logp * adv)`` over row micro-batches of ``rows``."""
    comp = mask[:, -width:].float()  # [N, C]
    adv = torch.linspace(-1, 1, ids.shape[0])  # [N]
    total = comp.sum()
    for sl in torch.arange(ids.shape[0]).split(rows):
        logp, _ = fn(model, ids[sl], mask[sl], width)  # [m, C]
        loss = -(logp * adv[sl, None] * comp[sl]).sum() / total
        loss.backward()
    model.zero_grad(set_to_none=True)


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small random model, small sizes")
    p.add_argument("--model", default=None, help="smollm2 | small_llama | tiny_llama | tiny_qwen3")
    p.add_argument("--prompt", type=int, default=None, help="P")
    p.add_argument("--completion", type=int, default=64, help="C")
    p.add_argument("--group", type=int, default=8, help="G")
    p.add_argument("--groups", type=int, default=1, help="B")
    p.add_argument(
        "--micro", type=int, default=4, help="naive rows per forward (module.learner.micro_batch_size)"
    )
    p.add_argument("--chunk", type=int, default=0, help="LM-head chunk for ours (0 = one chunk)")
    p.add_argument("--no-ckpt", action="store_true", help="disable gradient checkpointing (both arms)")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    set_threads(args.threads)
    name = args.model or ("small_llama" if args.quick else "smollm2")
    prompt = args.prompt or (1024 if args.quick else 2048)
    width = 32 if args.quick and args.completion == 64 else args.completion
    model = load(name, gradient_checkpointing=not args.no_ckpt).model.train()
    ids, mask = synthetic_groups(model.config.vocab_size, args.groups, args.group, prompt, width)
    chunk = args.chunk or None

    def naive(m, i, a, w):
        return completion_logprobs(m, i, a, w, 0.7)

    def ours(m, i, a, w):
        return grouped_completion_logprobs(m, i, a, w, args.group, 0.7, chunk_size=chunk)

    def arm(fn, rows):
        def run():
            ctx = contextlib.nullcontext() if args.fp32 else torch.autocast("cpu", torch.bfloat16)
            with ctx:
                step(model, ids, mask, width, rows, fn)

        return run

    print(
        f"# model={name} P={prompt} C={width} G={args.group} B={args.groups} naive_micro={args.micro} "
        f"ckpt={not args.no_ckpt} bf16_autocast={not args.fp32} threads={torch.get_num_threads()}",
        flush=True,
    )
    precision_line(dict.fromkeys(("ours", "naive"), FP32 if args.fp32 else BF16_MIXED))
    times = interleaved_times(
        {"ours": arm(ours, args.group), "naive": arm(naive, args.micro)}, reps=args.reps, warmup=1
    )
    tag = "quick" if args.quick else f"{name}_P{prompt}_C{width}_G{args.group}"
    return [
        figure(f"prefix_train_step_s[{tag}]", times["naive"] / times["ours"], times["ours"], times["naive"])
    ]


if __name__ == "__main__":
    main()
