"""Rollout throughput: our decode loop vs ``generate`` over the same shared prefill vs G prefills.

Three arms sample the same B prompts x G completions with the same seed, temperature 0.7 and token budget,
under one ``torch.autocast("cpu", torch.bfloat16)`` region per call (as inside a ``bf16-mixed`` Lightning
training step), interleaved call by call so machine load hits them alike:

* ``lean``: ``HFRollout(prefill_once=True)``, ``rollout=hf_shared`` as it runs now: our own decode loop
  (``rollout/shared_decode.py``) with the ``inverse_cdf`` sampler;
* ``generate``: ``HFRollout(prefill_once=True, decode="generate")``, ``rollout=hf_shared`` before the loop:
  ``generate`` continuing from the shared prefill (``rollout.decode=generate``);
* ``naive``: ``HFRollout()``, ``rollout=hf``: ``generate`` with one prefill per sample;
* ``lean_multinomial`` (only with ``--arms``): our loop drawing with ``torch.multinomial`` as ``generate``
  does (``rollout.sampler=multinomial``), which separates the loop's gain from the sampler's.

Throughput = completion tokens up to EOS / wall seconds (the arms draw different tokens, so their EOS may
fall differently; tokens per second stays comparable).

    python scripts/bench/bench_generate.py            # SmolLM2, P=1024, G=4, 64 new tokens
    python scripts/bench/bench_generate.py --quick    # small random Llama, P=1024, G=4, 16 new tokens
    python scripts/bench/bench_generate.py --long     # bench_peer.py's long line: P=2048, G=8, 64, 2 threads

Prints ``generate_tokens_per_s ratio=<a/b> a=<tok/s lean> b=<tok/s naive>`` (``rollout=hf_shared`` vs
``rollout=hf``) and ``generate_lean_vs_generate_tokens_per_s ratio=<a/b> a=<lean> b=<generate>`` (the new
hf_shared decode vs the old one).
"""

from __future__ import annotations

import argparse

import torch
from _common import BF16_MIXED, figure, interleaved_times, load, precision_line, set_threads

from longact_pl.rollout.hf import HFRollout

# bench_peer.py's long-context line (its LONG setting, 2 threads)
LONG = {"model": "small_llama", "prompt": 2048, "group": 8, "new": 64, "threads": 2}


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small random model, small sizes")
    p.add_argument("--long", action="store_true", help="bench_peer.py's long-context line (overrides sizes)")
    p.add_argument("--model", default=None, help="smollm2 | small_llama | tiny_llama | tiny_qwen3")
    p.add_argument("--prompt", type=int, default=None, help="P tokens per prompt")
    p.add_argument("--prompts", type=int, default=1, help="B prompts")
    p.add_argument("--group", type=int, default=4, help="G")
    p.add_argument("--new", type=int, default=None, help="max new tokens")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument(
        "--arms",
        default="lean,generate,naive",
        help="comma-separated, of lean, generate, naive, lean_multinomial (our loop, generate's draws)",
    )
    args = p.parse_args(argv)
    if args.long:
        args.model, args.prompt, args.group, args.new = (
            LONG["model"],
            LONG["prompt"],
            LONG["group"],
            LONG["new"],
        )
        args.threads = args.threads or LONG["threads"]
    set_threads(args.threads)
    name = args.model or ("small_llama" if args.quick else "smollm2")
    prompt_len = args.prompt or 1024
    new = args.new or (16 if args.quick else 64)
    loaded = load(name)
    model, tok = loaded.model, loaded.tokenizer
    model.generation_config.eos_token_id = tok.eos_token_id
    gen = torch.Generator().manual_seed(0)
    prompts = [
        torch.randint(10, model.config.vocab_size, (prompt_len - 5 * b,), generator=gen).tolist()
        for b in range(args.prompts)
    ]
    kw = {"group_size": args.group, "max_new_tokens": new, "temperature": 0.7}
    every = {
        "lean": HFRollout(prefill_once=True, **kw),
        "generate": HFRollout(prefill_once=True, decode="generate", **kw),
        "lean_multinomial": HFRollout(prefill_once=True, sampler="multinomial", **kw),
        "naive": HFRollout(**kw),
    }
    engines = {k: every[k] for k in args.arms.split(",")}
    tokens: dict[str, int] = {}

    def arm(key: str):
        def run() -> None:
            with torch.autocast("cpu", torch.bfloat16):
                ro = engines[key].generate(model, tok, prompts, seed=1)
            tokens[key] = int(ro.completion_mask.sum())

        return run

    times = interleaved_times({k: arm(k) for k in engines}, reps=args.reps, warmup=1)
    rate = {k: tokens[k] / times[k] for k in engines}
    print(
        f"# model={name} B={args.prompts} P={prompt_len} G={args.group} new={new} "
        f"threads={torch.get_num_threads()} bf16_autocast=True; median seconds (tokens): "
        + ", ".join(f"{k} {times[k]:.3f} ({tokens[k]})" for k in engines),
        flush=True,
    )
    precision_line(dict.fromkeys(engines, BF16_MIXED))
    tag = "long" if args.long else "quick" if args.quick else f"{name}_P{prompt_len}_G{args.group}_new{new}"
    lines = []
    if {"lean", "naive"} <= set(engines):
        lines.append(
            figure(f"generate_tokens_per_s[{tag}]", rate["lean"] / rate["naive"], rate["lean"], rate["naive"])
        )
    if {"lean", "generate"} <= set(engines):
        lines.append(
            figure(
                f"generate_lean_vs_generate_tokens_per_s[{tag}]",
                rate["lean"] / rate["generate"],
                rate["lean"],
                rate["generate"],
            )
        )
    return lines


if __name__ == "__main__":
    main()
