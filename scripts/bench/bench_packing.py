"""Packed completions vs padded ones behind a shared prompt: training log-prob pass of one group.

One GRPO group: a P-token prompt and G completions of long-tailed lengths, as RL rollouts are (median about
1/8 of the budget C, one completion at the budget). Both arms run the shared-prefix pass the learner runs
(``grouped_completion_logprobs``: the prompt once, the LM head in chunks of 1024 tokens), forward + backward
of a GRPO-shaped loss, under bf16 autocast with gradient checkpointing:

* padded (b): the G completions as ``[G, C]`` rows, each padded to the budget (the longest);
* packed (a): the G completions in one row of ``sum(lengths)`` tokens (``module.logprobs.pack_completions``).

The limit of the speed-up is the token-count ratio ``(P + G * C) / (P + sum(lengths))``, printed beside it.
Time: medians over interleaved reps in this process. Memory: peak RSS increase during the first forward +
backward, each arm in a fresh subprocess.

The quick mode also reports the padding of the default run's completion pass (``make train``: SmolLM2,
``data=niah``, ``rollout=hf_shared``, G=4, 40 new tokens): one batch is sampled as step 0 samples it.

    python scripts/bench/bench_packing.py            # SmolLM2, P=1024, G=8, C=1024
    python scripts/bench/bench_packing.py --quick    # small random Llama, the same sizes

Prints ``packing_train_step_s ratio=<b/a> a=<s packed> b=<s padded>`` (and the token limit on a comment line)
and ``packing_peak_rss_mb ratio=<b/a> a=<MB packed> b=<MB padded>``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from _common import BF16_MIXED, PeakRSS, figure, interleaved_times, load, precision_line, set_threads

from longact_pl.ops.shared_prefix import grouped_completion_logprobs

ROOT = Path(__file__).resolve().parents[2]


def lengths_long_tailed(group: int, budget: int) -> list[int]:
    """G completion lengths: one at the budget, the rest spread around a median of ``budget / 8``."""
    median = budget / 8
    factors = torch.logspace(1.2, -1.8, group - 1, base=2.0)  # 2.3x .. 0.29x budget / 8, log-spaced
    return [budget] + [max(1, min(budget, round(median * float(f)))) for f in factors]


def one_group(vocab: int, prompt: int, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[G, P + C]`` ids and mask: one prompt, right-padded completions of the given lengths."""
    gen = torch.Generator().manual_seed(0)
    width = max(lengths)
    ids = torch.randint(10, vocab, (len(lengths), prompt + width), generator=gen)
    ids[:, :prompt] = ids[0, :prompt]
    mask = torch.ones_like(ids)
    for r, length in enumerate(lengths):
        ids[r, prompt + length :], mask[r, prompt + length :] = 0, 0
    return ids, mask


def step(model, ids, mask, width: int, pack: bool) -> None:
    """Forward + backward of ``-mean(logp * adv)`` over the group's real tokens."""
    comp = mask[:, -width:].float()  # [G, C]
    adv = torch.linspace(-1, 1, ids.shape[0])  # [G]
    with torch.autocast("cpu", torch.bfloat16):
        logp, _ = grouped_completion_logprobs(
            model, ids, mask, width, ids.shape[0], 0.7, chunk_size=1024, pack=pack
        )
        (-(logp * adv[:, None] * comp).sum() / comp.sum()).backward()
    model.zero_grad(set_to_none=True)


def default_run_padding() -> str:
    """Padding share of the default run's completion pass (one sampled batch), before and after packing."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=."])
    loaded = instantiate(cfg.model)
    data = instantiate(cfg.data, tokenizer=loaded.tokenizer)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    rollout = instantiate(cfg.rollout)
    with torch.no_grad():  # the seed of step 0 (LongActModule._sample)
        ro = rollout.generate(
            loaded.model.eval(), loaded.tokenizer, [s["prompt_ids"] for s in batch], seed=cfg.seed * 1_000_003
        )
    real = int(ro.completion_mask.sum())
    padded = ro.completion_mask.numel()  # every row padded to the batch's longest completion
    return (
        f"# default run (SmolLM2, niah, hf_shared, G={ro.group_size}, "
        f"max_new_tokens={rollout.max_new_tokens}): completion pass {padded} token slots for {real} real "
        f"tokens: padding {1 - real / padded:.1%} padded, 0.0% packed"
    )


def run_variant(args: argparse.Namespace) -> dict:
    """Peak RSS increase of one arm's first forward + backward, in this (fresh) process."""
    set_threads(args.threads)
    model = load(args.model, gradient_checkpointing=True).model.train()
    lengths = lengths_long_tailed(args.group, args.budget)
    ids, mask = one_group(model.config.vocab_size, args.prompt, lengths)
    with PeakRSS() as rss:
        step(model, ids, mask, args.budget, args.variant == "packed")
    return {"peak_mb": rss.peak_mb}


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small random model (the same sizes)")
    p.add_argument("--model", default=None, help="smollm2 | small_llama | tiny_llama | tiny_qwen3")
    p.add_argument("--prompt", type=int, default=1024, help="P")
    p.add_argument("--group", type=int, default=8, help="G")
    p.add_argument("--budget", type=int, default=1024, help="C, the longest completion")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-default-run", action="store_true", help="skip the default run's padding share")
    p.add_argument("--variant", choices=["packed", "padded"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.model = args.model or ("small_llama" if args.quick else "smollm2")
    if args.variant:
        print(json.dumps(run_variant(args)), flush=True)
        return []
    set_threads(args.threads)
    lengths = lengths_long_tailed(args.group, args.budget)
    limit = (args.prompt + args.group * args.budget) / (args.prompt + sum(lengths))
    forward = ["--model", args.model, "--prompt", str(args.prompt), "--group", str(args.group)]
    forward += ["--budget", str(args.budget), "--threads", str(args.threads)]
    memory = {}
    for variant in ("packed", "padded"):
        out = subprocess.run(
            [sys.executable, __file__, *forward, "--variant", variant],
            capture_output=True,
            text=True,
            check=True,
        )
        memory[variant] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]
    model = load(args.model, gradient_checkpointing=True).model.train()
    ids, mask = one_group(model.config.vocab_size, args.prompt, lengths)
    times = interleaved_times(
        {
            "packed": lambda: step(model, ids, mask, args.budget, True),
            "padded": lambda: step(model, ids, mask, args.budget, False),
        },
        reps=args.reps,
    )
    print(
        f"# model={args.model} P={args.prompt} G={args.group} C={args.budget} lengths={lengths} "
        f"ckpt=True bf16_autocast=True threads={torch.get_num_threads()}",
        flush=True,
    )
    precision_line(dict.fromkeys(("packed", "padded"), BF16_MIXED))
    speedup = times["padded"] / times["packed"]
    print(
        f"# token-count ratio (the limit): (P + G*C) / (P + sum(lengths)) = "
        f"{args.prompt + args.group * args.budget} / {args.prompt + sum(lengths)} = {limit:.2f}; "
        f"measured {speedup:.2f} ({speedup / limit:.0%} of the limit)",
        flush=True,
    )
    if args.quick and not args.no_default_run:
        print(default_run_padding(), flush=True)
    tag = "quick" if args.quick else f"{args.model}_P{args.prompt}_G{args.group}_C{args.budget}"
    return [
        figure(
            f"packing_train_step_s[{tag}]",
            times["padded"] / times["packed"],
            times["packed"],
            times["padded"],
        ),
        figure(
            f"packing_peak_rss_mb[{tag}]",
            memory["padded"] / max(memory["packed"], 1e-9),
            memory["packed"],
            memory["padded"],
        ),
    ]


if __name__ == "__main__":
    main()
