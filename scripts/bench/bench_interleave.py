"""The layer-interleaved shared-prompt pass vs the two-pass order: time of the log-prob pass, peak memory.

Both arms run ``grouped_completion_logprobs`` (the pass the learner runs) on the same group, forward +
backward of a GRPO-shaped loss under bf16 autocast; values and gradients are bit-identical
(``tests/ops/test_interleaved.py``), so only time and memory can differ:

* interleaved (a): prompt then completions through each decoder layer (``ops/interleaved.py``, the default);
* two-pass (b): the prompt through every layer, then the completions (``interleave=False``).

Time: the median of the per-rep ratios (arms run in turn, rep by rep, in this process; a load change hits
both arms of a rep), packed and padded completions, with and without gradient checkpointing. Memory: one
GRPO update through the learner in a fresh process per arm, peak
resident memory above the parameters (``longact_pl.memory.measure``) beside the plan's, on a shape whose
two-pass K/V + gradient hold is large (``longact_pl.memory.cases.HOLD_CASES``: 8 layers, 4 KV heads x 64,
P = 8192, G = 4 x 256, checkpointing).

    python scripts/bench/bench_interleave.py            # P=4096 timing, the 8k memory case (~5 min, 2 cores)
    python scripts/bench/bench_interleave.py --quick    # P=1024 timing, the memory case

Prints ``interleave_step_s[<arm>] ratio=<a/b> a=<s interleaved> b=<s two-pass>`` (below 1: interleaved
faster) and ``interleave_peak_mb ratio=<a/b> a=<MiB interleaved> b=<MiB two-pass>`` with the planned MiB
on a comment line.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from _common import BF16_MIXED, figure, interleaved_times, precision_line, set_threads

from longact_pl.memory.cases import HOLD_CASES
from longact_pl.memory.measure import MALLOC_ENV
from longact_pl.models.tiny import tiny_qwen3
from longact_pl.ops.shared_prefix import grouped_completion_logprobs

ROOT = Path(__file__).resolve().parents[2]


def step(model, ids, mask, width: int, pack: bool, interleave: bool) -> None:
    """Forward + backward of ``-mean(logp * adv)`` over the group's real tokens."""
    comp = mask[:, -width:].float()  # [G, C]
    adv = torch.linspace(-1, 1, ids.shape[0])  # [G]
    with torch.autocast("cpu", torch.bfloat16):
        logp, _ = grouped_completion_logprobs(
            model, ids, mask, width, ids.shape[0], 0.7, chunk_size=256, pack=pack, interleave=interleave
        )  # [G, C]
        (-(logp * adv[:, None] * comp).sum() / comp.sum()).backward()
    model.zero_grad(set_to_none=True)


def one_group(vocab: int, prompt: int, group: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[G, P + C]`` ids and mask: one prompt, completions of ``width``, ``width / 2``, ... tokens."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(10, vocab, (group, prompt + width), generator=gen)  # [G, P + C]
    ids[:, :prompt] = ids[0, :prompt]
    mask = torch.ones_like(ids)  # [G, P + C]
    for r in range(1, group):
        cut = width - max(1, width >> r)
        ids[r, prompt + width - cut :], mask[r, prompt + width - cut :] = 0, 0
    return ids, mask


def times(args: argparse.Namespace) -> list[str]:
    """Interleaved vs two-pass step time per (completions, checkpointing) arm."""
    lines = []
    for pack, ckpt in ((True, True), (True, False), (False, True)):
        model = tiny_qwen3(
            seed=0, hidden_size=256, num_layers=4, heads=4, kv_heads=2, gradient_checkpointing=ckpt
        ).model.train()
        ids, mask = one_group(model.config.vocab_size, args.prompt, args.group, args.completion)
        arms = {
            il: functools.partial(step, model, ids, mask, args.completion, pack, il) for il in (True, False)
        }
        for fn in arms.values():  # warm-up
            fn()
        pairs = [interleaved_times(arms, reps=1, warmup=0) for _ in range(args.reps)]  # rep by rep
        ratio = statistics.median(t[True] / t[False] for t in pairs)  # paired: load shifts hit both arms
        a, b = (statistics.median(t[il] for t in pairs) for il in (True, False))
        arm = f"{'packed' if pack else 'padded'}_{'ckpt' if ckpt else 'plain'}"
        lines.append(figure(f"interleave_step_s[{arm}]", ratio, a, b))
    return lines


def memory(args: argparse.Namespace) -> list[str]:
    """Peak resident MiB of one learner update, interleaved vs two-pass (fresh process each)."""
    env = {**os.environ, **MALLOC_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    rows = {}
    for case in HOLD_CASES:
        cmd = [sys.executable, "-m", "longact_pl.memory.measure", json.dumps([case]), str(args.threads or 1)]
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        rows[case["interleave"]] = json.loads(out.stdout.strip().splitlines()[-1])
    a, b = (rows[k]["measured"] / 2**20 for k in (True, False))
    pa, pb = (rows[k]["planned"] / 2**20 for k in (True, False))
    print(
        f"# planned MiB: interleaved {pa:.0f}, two-pass {pb:.0f} (plan/measured {pa / a:.2f}, {pb / b:.2f})"
    )
    return [figure("interleave_peak_mb", a / b, a, b)]


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="P=1024 timing")
    p.add_argument("--prompt", type=int, default=None, help="P of the timing arms (default 4096, quick 1024)")
    p.add_argument("--group", type=int, default=4, help="G")
    p.add_argument("--completion", type=int, default=256, help="C, the longest completion")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-memory", action="store_true", help="timing only")
    args = p.parse_args(argv)
    args.prompt = args.prompt or (1024 if args.quick else 4096)
    set_threads(args.threads)
    print(
        f"# small Qwen3 (H 256, 4 layers) P={args.prompt} G={args.group} C={args.completion} "
        f"threads={torch.get_num_threads()}",
        flush=True,
    )
    precision_line(dict.fromkeys(("interleaved", "two_pass"), BF16_MIXED))
    return times(args) + ([] if args.no_memory else memory(args))


if __name__ == "__main__":
    main()
