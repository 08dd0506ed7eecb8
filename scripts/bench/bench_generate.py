"""Rollout throughput: one prefill per prompt (``HFRollout(prefill_once=True)``) vs G prefills.

Both engines sample the same B prompts x G completions with the same seed, temperature 0.7 and token budget,
under one ``torch.autocast("cpu", torch.bfloat16)`` region per call (as inside a ``bf16-mixed`` Lightning
training step), interleaved call by call. Throughput = completion tokens up to EOS / wall seconds.

    python scripts/bench/bench_generate.py            # SmolLM2, P=1024, G=4, 64 new tokens
    python scripts/bench/bench_generate.py --quick    # small random Llama, P=1024, G=4, 16 new tokens

Prints ``generate_tokens_per_s ratio=<a/b> a=<tok/s shared prefill> b=<tok/s HFRollout>``.
"""

from __future__ import annotations

import argparse

import torch
from _common import BF16_MIXED, figure, interleaved_times, load, precision_line, set_threads

from longact_pl.rollout.hf import HFRollout


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small random model, small sizes")
    p.add_argument("--model", default=None, help="smollm2 | small_llama | tiny_llama | tiny_qwen3")
    p.add_argument("--prompt", type=int, default=None, help="P tokens per prompt")
    p.add_argument("--prompts", type=int, default=1, help="B prompts")
    p.add_argument("--group", type=int, default=4, help="G")
    p.add_argument("--new", type=int, default=None, help="max new tokens")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
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
    engines = {
        "shared": HFRollout(prefill_once=True, group_size=args.group, max_new_tokens=new, temperature=0.7),
        "naive": HFRollout(group_size=args.group, max_new_tokens=new, temperature=0.7),
    }
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
        f"# model={name} B={args.prompts} P={prompt_len} G={args.group} new={new} bf16_autocast=True "
        f"tokens shared/naive={tokens['shared']}/{tokens['naive']} seconds "
        f"shared/naive={times['shared']:.2f}/{times['naive']:.2f}",
        flush=True,
    )
    precision_line(dict.fromkeys(engines, BF16_MIXED))
    tag = "quick" if args.quick else f"{name}_P{prompt_len}_G{args.group}_new{new}"
    return [
        figure(f"generate_tokens_per_s[{tag}]", rate["shared"] / rate["naive"], rate["shared"], rate["naive"])
    ]


if __name__ == "__main__":
    main()
