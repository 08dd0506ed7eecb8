"""Per-step overhead of LongAct masking: K optimizer steps (fwd + bwd + AdamW) with vs without the mask.

Both arms train copies of the same model on the same batch with the same seed, interleaved step by step so
machine noise hits both alike. The masked arm uses exactly the callback's optimizer-step path: the
``RowFreezer`` step pre/post hooks on the torch optimizer plus the gradient masking before the step; with
``--telemetry`` the kept-share measurement around it and the per-batch activation L1 hooks, with
``--refresh`` the statistics hooks that gather refresh statistics (``--unit``, ``--measure-at`` choose which:
``--unit rope_pair --measure-at post_rope`` hooks the attention function and scores pair magnitudes).
``--new-stats`` turns all of them on.

    python scripts/bench/bench_masking.py                  # tiny Llama
    python scripts/bench/bench_masking.py --new-stats      # + telemetry, refresh stats, rope_pair, post_rope
    python scripts/bench/bench_masking.py --model smollm2 --seq 512 --steps 10

On a shared CPU, pass ``--threads 1 --clock cpu`` and more ``--steps``: other processes make wall-clock
timings noisy, while the thread's CPU time counts only this process's own work.

Prints ``masking_overhead ratio=<a/b> a=<s/step saliency> b=<s/step none>`` (median step times).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import FP32, precision_line
from hydra.utils import instantiate
from omegaconf import OmegaConf

from longact_pl.masking import SaliencyMask
from longact_pl.masking.apply import RowFreezer
from longact_pl.masking.calibrate import collect_stats
from longact_pl.masking.stats import StatsCollector
from longact_pl.masking.telemetry import GradShare, act_l1_mass


def load(name: str) -> torch.nn.Module:
    if name == "smollm2":
        from longact_pl.models.smollm2 import load_smollm2

        return load_smollm2().model
    from longact_pl.models import tiny

    return getattr(tiny, name)(seed=0).model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def unit(name: str):
    """The selection unit of ``conf/masking/unit/<name>.yaml`` (as ``masking/unit=<name>`` picks it)."""
    return instantiate(
        OmegaConf.load(Path(__file__).resolve().parents[2] / "conf/masking/unit" / f"{name}.yaml")
    )


class MaskedPath:
    """The callback's per-step work on the masked arm (freezer, telemetry, statistics hooks)."""

    def __init__(self, model, ids, args) -> None:
        cb = SaliencyMask(
            ratio=args.ratio, unit=unit(args.unit), measure_at=args.measure_at,
            refresh_every=1 if args.refresh else 0, telemetry=args.telemetry,
        )  # fmt: skip
        builder = cb.check_model(model)
        stats = collect_stats(model, builder.targets, [ids[0].tolist()], units=builder.stats_units())
        self.masks = builder.build(builder.scores(stats))
        self.freezer = RowFreezer()
        self.freezer.set_masks(builder.linears, builder.module_masks(self.masks))
        self.params = [p for lin in builder.linears.values() for p in lin.parameters()]
        self.telemetry, self.grad, self.gate = args.telemetry, GradShare(), [None]
        self.collector = None
        if args.refresh or args.telemetry:
            self.collector = StatsCollector(
                {t.name: t.probe for t in builder.targets}, gate=lambda: self.gate[0],
                units=builder.stats_units() if args.refresh else None, scores=args.refresh,
            )  # fmt: skip
            self.collector.attach()

    def before_step(self) -> None:
        """``on_before_optimizer_step``: mask (and measure) the gradient."""
        if self.telemetry:
            self.grad.measure(self.params, self.freezer.mask_grads)
            self.grad.commit()
        else:
            self.freezer.mask_grads()

    def after_step(self) -> None:
        """``on_train_batch_end``: the step's telemetry from the batch statistics."""
        stats = self.collector.reset() if self.collector is not None else {}
        if self.telemetry:
            self.logged = torch.cat([self.grad.take(), act_l1_mass(stats, self.masks)])  # [5]


def step(model, opt, ids, attn, path: MaskedPath | None, clock=time.perf_counter) -> float:
    sync(ids.device)
    t0 = clock()
    if path is not None:
        path.gate[0] = attn.bool()
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits  # [B, T, V]
    if path is not None:
        path.gate[0] = None
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    if path is not None:
        path.before_step()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()  # snapshot/restore hooks run around the update
    opt.zero_grad(set_to_none=True)
    if path is not None:
        path.after_step()
    sync(ids.device)
    return clock() - t0


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description="LongAct masking overhead")
    p.add_argument("--model", default="tiny_llama", help="tiny_llama | tiny_qwen3 | smollm2")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=20, help="timed steps per arm")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--refresh", action="store_true", help="also run the refresh statistics hooks")
    p.add_argument("--telemetry", action="store_true", help="also measure the grad/activation kept shares")
    p.add_argument("--unit", default="channel", help="a conf/masking/unit file: channel | rope_pair | head")
    p.add_argument("--measure-at", default="proj", help="proj | norm | post_rope")
    p.add_argument("--new-stats", action="store_true", help="= --telemetry --refresh rope_pair post_rope")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"], help="cpu: this thread's CPU time")
    args = p.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    base = load(args.model).to(device)
    vocab = base.config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.seq), device=device)  # [B, T]
    attn = torch.ones_like(ids)  # [B, T]

    if args.new_stats:
        args.telemetry, args.refresh, args.unit, args.measure_at = True, True, "rope_pair", "post_rope"
    masked, dense = copy.deepcopy(base), copy.deepcopy(base)  # same construction for both arms
    path = MaskedPath(masked, ids, args)
    opt_m = torch.optim.AdamW(masked.parameters(), lr=1e-4, weight_decay=0.1)
    opt_d = torch.optim.AdamW(dense.parameters(), lr=1e-4, weight_decay=0.1)
    path.freezer.attach([opt_m])

    if args.clock == "cpu" and (args.device != "cpu" or args.threads != 1):
        raise ValueError("--clock cpu measures one CPU thread: use it with --device cpu --threads 1")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    times_m, times_d = [], []
    for i in range(args.warmup + args.steps):
        if i % 2:  # alternate which arm goes first so order effects cancel
            b = step(dense, opt_d, ids, attn, None, clock)
            a = step(masked, opt_m, ids, attn, path, clock)
        else:
            a = step(masked, opt_m, ids, attn, path, clock)
            b = step(dense, opt_d, ids, attn, None, clock)
        if i >= args.warmup:
            times_m.append(a)
            times_d.append(b)
    a, b = statistics.median(times_m), statistics.median(times_d)
    precision_line({"saliency": FP32, "none": FP32})  # no autocast: fp32 weights and compute
    print(f"masking_overhead ratio={a / b:.4f} a={a:.4f} b={b:.4f}")
    return a / b


if __name__ == "__main__":
    main()
