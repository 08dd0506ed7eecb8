"""Per-step overhead of LongAct masking: K optimizer steps (fwd + bwd + AdamW) with vs without the mask.

Both arms train copies of the same model on the same batch with the same seed, interleaved step by step so
machine noise hits both alike. The masked arm uses exactly the callback's optimizer-step path: the
``RowFreezer`` step pre/post hooks on the torch optimizer plus ``mask_grads()`` before the step (and, with
``--refresh``, the ``StatsCollector`` forward hooks that gather refresh statistics).

    python scripts/bench/bench_masking.py                  # tiny Llama
    python scripts/bench/bench_masking.py --model smollm2 --seq 512 --steps 10

On a shared CPU, pass ``--threads 1`` and more ``--steps``: other processes make timings noisy.

Prints ``masking_overhead ratio=<a/b> a=<s/step saliency> b=<s/step none>`` (median step times).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from longact_pl.masking.apply import RowFreezer
from longact_pl.masking.calibrate import collect_stats
from longact_pl.masking.selection import TopK, build_masks
from longact_pl.masking.stats import StatsCollector
from longact_pl.masking.targets import find_targets


def load(name: str) -> torch.nn.Module:
    if name == "smollm2":
        from longact_pl.models.smollm2 import load_smollm2

        return load_smollm2().model
    from longact_pl.models import tiny

    return getattr(tiny, name)(seed=0).model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(model, opt, ids, attn, freezer: RowFreezer | None, gate: list) -> float:
    sync(ids.device)
    t0 = time.perf_counter()
    gate[0] = attn.bool()
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits  # [B, T, V]
    gate[0] = None
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    if freezer is not None:
        freezer.mask_grads()  # the callback's on_before_optimizer_step
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()  # snapshot/restore hooks run around the update
    opt.zero_grad(set_to_none=True)
    sync(ids.device)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description="LongAct masking overhead")
    p.add_argument("--model", default="tiny_llama", help="tiny_llama | tiny_qwen3 | smollm2")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=20, help="timed steps per arm")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--refresh", action="store_true", help="also run the refresh statistics hooks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = p.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    base = load(args.model).to(device)
    vocab = base.config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.seq), device=device)  # [B, T]
    attn = torch.ones_like(ids)  # [B, T]

    masked, dense = base, copy.deepcopy(base)
    targets = find_targets(masked, ("q_proj", "k_proj"))
    stats = collect_stats(masked, targets, [ids[0].tolist()])
    groups: dict[str, list[str]] = {}
    for t in targets:
        groups.setdefault(t.group, []).append(t.name)
    masks = build_masks({k: s.statistic("mean_abs") for k, s in stats.items()}, groups, TopK(), args.ratio)

    opt_m = torch.optim.AdamW(masked.parameters(), lr=1e-4, weight_decay=0.1)
    opt_d = torch.optim.AdamW(dense.parameters(), lr=1e-4, weight_decay=0.1)
    freezer = RowFreezer()
    freezer.set_masks({t.name: t.linear for t in targets}, masks)
    freezer.attach([opt_m])
    gate: list = [None]
    if args.refresh:
        StatsCollector({t.name: t.measured for t in targets}, gate=lambda: gate[0]).attach()

    times_m, times_d = [], []
    for i in range(args.warmup + args.steps):
        if i % 2:  # alternate which arm goes first so order effects cancel
            b = step(dense, opt_d, ids, attn, None, [None])
            a = step(masked, opt_m, ids, attn, freezer, gate)
        else:
            a = step(masked, opt_m, ids, attn, freezer, gate)
            b = step(dense, opt_d, ids, attn, None, [None])
        if i >= args.warmup:
            times_m.append(a)
            times_d.append(b)
    a, b = statistics.median(times_m), statistics.median(times_d)
    print(f"masking_overhead ratio={a / b:.4f} a={a:.4f} b={b:.4f}")
    return a / b


if __name__ == "__main__":
    main()
