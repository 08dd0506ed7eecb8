"""Async rollouts (``rollout.mode=async``) vs the synchronous loop: steps/s, idle fractions, contention.

Both arms run the same RL steps on the same prompts: HF sampling of B prompts x G completions with a
long-tailed completion length per batch (log-normal token budgets, EOS off so every row runs to the budget),
then the learner's step (AdamW, token TIS correction; ``--kl`` adds the reference pass). One torch thread
per Python thread (the producer thread takes its creator's count: OpenMP's is per thread), so the two cores
are split between the engine and the trainer: the synchronous arm runs them one after the other, the async
arms run the producer thread (:class:`AsyncRollouts`, up to ``max_staleness`` batches ahead) beside the
trainer. The arms alternate (sync, async, sync, async, ...) so machine load hits them alike; the ratio is
the median of the pairs' ratios, printed with the load average.

Per arm: idle fraction = 1 - busy wall seconds / wall seconds for the engine and the trainer; their busy
time as wall seconds and as the thread's own CPU seconds (``time.thread_time``): busy wall above CPU is time
the thread was runnable but not running (waiting for the GIL or for a core); the overlap of the engine's
sampling with the trainer's no-grad passes (reference / old log-probs) and with its update; and the weight
hand-over (publish copy on the trainer, ``load_state_dict`` on the producer).

The token-count model fits two costs on the synchronous arms (engine seconds per decoded column of a batch,
trainer seconds per trained token) and predicts the wall time from each step's token counts: sync =
sum(g_k + t_k); async = the schedule in which batch j starts once the engine is free and version
j - max_staleness is published, and step j once batch j is ready and step j - 1 is done: the expected gain
when generation and training overlap perfectly on separate cores.

    python scripts/bench/bench_async.py            # small random Llama, 12 steps, 2 pairs
    python scripts/bench/bench_async.py --quick    # 6 steps, 1 pair

Prints ``async_steps_per_s ratio=<a/b> a=<async steps/s> b=<sync steps/s>`` and the model's ratio.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field

import torch
from _common import figure, load

from longact_pl.algos.algorithm import GroupPolicyGradient
from longact_pl.algos.correction import RolloutCorrection
from longact_pl.algos.correction_weights import TokenRatio
from longact_pl.distributed import LocalOps
from longact_pl.guards import NonFiniteGuard
from longact_pl.learner import Learner, OptimizerCalls
from longact_pl.ops.policy_logprobs import LogprobPass
from longact_pl.rollout.async_loop import AsyncRollouts
from longact_pl.rollout.hf import HFRollout

DEFAULT_SWITCH = sys.getswitchinterval()  # CPython's 5 ms


def label(staleness: int, switch: float) -> str:
    """An async arm's name."""
    extra = "" if switch == DEFAULT_SWITCH else f", switch interval {switch * 1000:g} ms"
    return f"staleness {staleness}{extra}"


@dataclass
class Arm:
    """One arm's timings (seconds; intervals as ``(start, end)`` perf_counter pairs)."""

    wall: float = 0.0
    gen: list[tuple[float, float]] = field(default_factory=list)  # engine intervals
    gen_cpu: float = 0.0
    passes: list[tuple[float, float]] = field(default_factory=list)  # trainer no-grad passes
    update: list[tuple[float, float]] = field(default_factory=list)  # trainer update
    train_cpu: float = 0.0
    cols: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    lags: list[int] = field(default_factory=list)
    publish_s: float = 0.0
    load_s: float = 0.0

    @staticmethod
    def busy(intervals) -> float:
        """Seconds inside ``intervals``."""
        return sum(b - a for a, b in intervals)

    @property
    def cpu(self) -> float:
        """CPU seconds of the engine and the trainer together."""
        return self.gen_cpu + self.train_cpu

    @property
    def cores(self) -> float:
        """Cores used on average: CPU seconds per wall second (1 at most for the sync loop)."""
        return self.cpu / self.wall

    @property
    def train(self) -> list[float]:
        """Trainer seconds per step (passes + update)."""
        return [p[1] - p[0] + u[1] - u[0] for p, u in zip(self.passes, self.update)]


def overlap(inner, outer) -> float:
    """Seconds of ``outer`` intervals covered by ``inner`` ones (each set disjoint within itself)."""
    return sum(max(0.0, min(b, d) - max(a, c)) for a, b in outer for c, d in inner)


class TailedHF(HFRollout):
    """HF sampling whose token budget per batch is long-tailed (log-normal), seeded by the batch's seed."""

    def __init__(self, median: int, sigma: float, cap: int, **kwargs) -> None:
        super().__init__(max_new_tokens=cap, **kwargs)
        self.median, self.sigma, self.cap = median, sigma, cap
        self.arm: Arm | None = None

    def budget(self, seed: int) -> int:
        """The batch's completion length: log-normal around ``median``, capped."""
        z = torch.randn(1, generator=torch.Generator().manual_seed(seed)).item()
        return max(2, min(self.cap, round(self.median * math.exp(self.sigma * z))))

    def generate(self, policy, tokenizer, prompts, greedy=False, seed=0, max_new_tokens=None):
        start, cpu = time.perf_counter(), time.thread_time()
        out = super().generate(policy, tokenizer, prompts, greedy, seed, max_new_tokens or self.budget(seed))
        if self.arm is None:  # not timed (scripts/gpu_check_async.py's warm-up)
            self.arm = Arm()
        self.arm.gen.append((start, time.perf_counter()))
        self.arm.gen_cpu += time.thread_time() - cpu
        self.arm.cols.append(out.completion_mask.shape[1])
        self.arm.tokens.append(int(out.attention_mask.sum()))
        return out


class TimedRollouts(AsyncRollouts):
    """The producer, timing its ``load_state_dict`` of each published version."""

    load_s = 0.0

    def _refresh(self) -> None:
        start = time.perf_counter()
        super()._refresh()
        self.load_s += time.perf_counter() - start


class Trainer:
    """One learner step per batch, timed by phase."""

    def __init__(self, policy, temperature: float, kl: float, arm: Arm) -> None:
        self.policy, self.arm = policy, arm
        self.ref = copy.deepcopy(policy).eval().requires_grad_(False) if kl > 0 else None
        passes = LogprobPass.for_model(policy, shared_prefix=True, chunk_size=None)
        self.learner = Learner(
            GroupPolicyGradient(kl_coef=kl), passes,
            NonFiniteGuard(3), temperature, correction=RolloutCorrection(level=TokenRatio()), external=True,
            micro_batch_size=8,
        )  # fmt: skip
        self.opt = torch.optim.AdamW(policy.parameters(), lr=1e-5)

    def step(self, batch, k: int) -> None:
        start, cpu = time.perf_counter(), time.thread_time()
        ids = batch.input_ids[:, batch.prompt_width :] * batch.completion_mask  # [N, C]
        rewards = (ids.sum(-1) % 2).float()  # [N]: mixed
        calls = OptimizerCalls(lambda loss: loss.backward(), self.opt.step,
                               lambda: self.opt.zero_grad(set_to_none=True), lambda: None)  # fmt: skip
        train = self.learner.prepare(self.policy, self.ref, batch, rewards)  # reference / old passes
        mid = time.perf_counter()
        self.learner.update(self.policy, train, calls, LocalOps(), torch.Generator().manual_seed(k))
        end = time.perf_counter()
        self.arm.passes.append((start, mid))
        self.arm.update.append((mid, end))
        self.arm.train_cpu += time.thread_time() - cpu


def sync_arm(policy, tok, engine, prompts, seeds, kl: float = 0.0) -> Arm:
    arm = engine.arm = Arm()
    trainer = Trainer(policy, engine.temperature, kl, arm)
    start = time.perf_counter()
    for k, (p, s) in enumerate(zip(prompts, seeds)):
        trainer.step(engine.generate(policy, tok, p, seed=s), k)
    arm.wall = time.perf_counter() - start
    return arm


def async_arm(policy, tok, engine, prompts, seeds, kl: float = 0.0, threads=None) -> Arm:
    arm = engine.arm = Arm()
    trainer = Trainer(policy, engine.temperature, kl, arm)
    staleness = engine.schedule.max_staleness
    rollouts = TimedRollouts(engine, tok, policy, engine.schedule, threads=threads)
    start = time.perf_counter()
    try:
        for k in range(len(prompts)):
            for j in range(k + 1, min(len(prompts), k + 1 + max(1, staleness))):  # the hook's lookahead
                rollouts.submit(j, prompts[j], seeds[j])
            got = rollouts.take(k, prompts[k], seeds[k])
            arm.lags.append(rollouts.version - got.oldest)
            trainer.step(got.batch, k)
            t0 = time.perf_counter()
            rollouts.publish(policy)
            arm.publish_s += time.perf_counter() - t0
    finally:
        rollouts.close()
    arm.wall, arm.load_s = time.perf_counter() - start, rollouts.load_s
    return arm


def token_model(gen, train, cols, tokens, staleness: int = 1) -> tuple[float, float, float]:
    """Fitted per-column / per-token costs -> (predicted sync s, predicted async s, ratio).

    Args:
        gen: Engine seconds per batch (sync).
        train: Trainer seconds per step (sync).
        cols: Decoded columns per batch.
        tokens: Trained tokens per step.
        staleness: ``max_staleness``: batch j starts once the engine is free and version j - staleness is
            published, step j once batch j is ready and step j - 1 is done.
    """
    c_gen, c_train = sum(gen) / sum(cols), sum(train) / sum(tokens)
    g = [c_gen * c for c in cols]
    t = [c_train * n for n in tokens]
    gen_end, train_end = [0.0] * len(g), [0.0] * len(g)
    for j in range(len(g)):
        published = train_end[j - staleness - 1] if j - staleness - 1 >= 0 else 0.0  # version j - staleness
        gen_end[j] = max(gen_end[j - 1] if j else 0.0, published) + g[j]
        train_end[j] = max(train_end[j - 1] if j else 0.0, gen_end[j]) + t[j]
    sync = sum(g) + sum(t)
    return sync, train_end[-1], sync / train_end[-1]


def fitted_model(syncs: list[Arm], staleness: int) -> tuple[float, float, float]:
    """:func:`token_model` of the first sync arm's steps, with costs fitted on every sync arm."""
    gens = [b - a for arm in syncs for a, b in arm.gen]
    c_gen = sum(gens) / sum(c for arm in syncs for c in arm.cols)
    c_train = sum(t for arm in syncs for t in arm.train) / sum(n for arm in syncs for n in arm.tokens)
    one = syncs[0]
    g, t = [c_gen * c for c in one.cols], [c_train * n for n in one.tokens]
    return token_model(g, t, one.cols, one.tokens, staleness)


def run_sync(policy, tok, engine, prompts, seeds):
    """The sync arm as ``(wall, engine s, trainer s, engine s per batch, trainer s per step, cols, tokens)``
    (``scripts/gpu_check_async.py`` calls this)."""
    arm = sync_arm(policy, tok, engine, prompts, seeds)
    gens = [b - a for a, b in arm.gen]
    return arm.wall, sum(gens), sum(arm.train), gens, arm.train, arm.cols, arm.tokens


def run_async(policy, tok, engine, prompts, seeds):
    """The async arm as ``(wall, engine s, trainer s, lag per step)`` (``scripts/gpu_check_async.py``)."""
    arm = async_arm(policy, tok, engine, prompts, seeds)
    return arm.wall, Arm.busy(arm.gen), sum(arm.train), arm.lags


def gil_profile(policy, tok, engine, prompts, seeds, kl, steps: int = 3) -> None:
    """Print, per side, the share of its wall time outside torch ops (Python: the GIL held), sync arm.

    Torch releases the GIL for the whole of an op called from Python (and for the whole backward), so the
    time between the profiler's top-level op events is the time a thread needs the GIL: the part of each
    side that cannot overlap the other side's GIL-held part. Shares, not seconds: load on the machine
    stretches op and non-op time alike.
    """
    from torch.profiler import ProfilerActivity, profile

    def outside(fn) -> tuple[float, float]:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            out = fn()
            wall = time.perf_counter() - start
        top = [e for e in prof.events() if e.cpu_parent is None]
        inside = sum(e.time_range.elapsed_us() for e in top) / 1e6
        return out, max(0.0, wall - inside), wall

    arm = engine.arm = Arm()
    trainer = Trainer(policy, engine.temperature, kl, arm)
    held = {"engine": [0.0, 0.0], "trainer": [0.0, 0.0]}
    for k in range(min(steps, len(prompts))):
        batch, out_s, wall = outside(lambda k=k: engine.generate(policy, tok, prompts[k], seed=seeds[k]))
        held["engine"][0] += out_s
        held["engine"][1] += wall
        _, out_s, wall = outside(lambda k=k, batch=batch: trainer.step(batch, k))
        held["trainer"][0] += out_s
        held["trainer"][1] += wall
    shares = ", ".join(f"{side} {o / w:.0%} of {w:.1f} s" for side, (o, w) in held.items())
    print(f"# GIL (profiled, first steps of a sync arm): outside torch ops {shares}", flush=True)


def spare_cores(seconds: float = 1.0) -> tuple[float, float]:
    """Cores one and two GIL-free torch threads get now (matmuls, one intra-op thread each).

    On an idle 2-core machine about (1.0, 2.0): the most the sync and the async arm can use. Under other
    jobs' load the second number drops (the kernel shares the cores between sessions, not threads).
    """
    a = torch.randn(384, 384)

    def spin(stop: float, out: list) -> None:
        torch.set_num_threads(1)
        start = time.thread_time()
        while time.perf_counter() < stop:
            a @ a
        out.append(time.thread_time() - start)

    got = []
    for n in (1, 2):
        cpu: list[float] = []
        stop = time.perf_counter() + seconds
        threads = [threading.Thread(target=spin, args=(stop, cpu)) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got.append(sum(cpu) / seconds)
    return got[0], got[1]


def describe(name: str, arm: Arm, steps: int) -> None:
    """One arm's line: steps/s, idle fractions, busy wall vs CPU seconds, overlap, hand-over."""
    gen, train = Arm.busy(arm.gen), sum(arm.train)
    passes, update = Arm.busy(arm.passes), Arm.busy(arm.update)
    line = (
        f"# {name}: {steps / arm.wall:.3f} steps/s, wall {arm.wall:.1f} s, {arm.cores:.2f} cores used; "
        f"engine busy {gen:.1f} s wall / "
        f"{arm.gen_cpu:.1f} s CPU (idle {1 - gen / arm.wall:.0%}); trainer busy {train:.1f} s wall / "
        f"{arm.train_cpu:.1f} s CPU (idle {1 - train / arm.wall:.0%})"
    )
    if arm.lags:
        line += (
            f"; engine sampling during {overlap(arm.gen, arm.passes) / max(passes, 1e-9):.0%} of the no-grad "
            f"passes ({passes:.1f} s) and {overlap(arm.gen, arm.update) / update:.0%} of the update; "
            f"publish {arm.publish_s:.2f} s, load_state_dict {arm.load_s:.2f} s; lags {arm.lags}"
        )
    print(line, flush=True)


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps, one pair")
    p.add_argument("--model", default="small_llama", help="small_llama | tiny_llama | tiny_qwen3")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--pairs", type=int, default=None, help="alternating (sync, async) repeats")
    p.add_argument("--staleness", default="1", help="comma-separated max_staleness of the async arms")
    p.add_argument(
        "--switch",
        default=None,
        help="comma-separated sys.setswitchinterval of the async arms (GIL hand-over)",
    )
    p.add_argument(
        "--producer-threads", type=int, default=None,
        help="torch threads of the producer thread (default: the trainer's 1; 2 = before the per-thread fix)",
    )  # fmt: skip
    p.add_argument("--gil", action="store_true", help="first profile the GIL-held share of each side")
    p.add_argument("--kl", type=float, default=0.0, help="KL coefficient (> 0: a reference pass per step)")
    p.add_argument("--prompts", type=int, default=2, help="B")
    p.add_argument("--group", type=int, default=4, help="G")
    # P=512: with short prompts a small model's HF decoding is Python-bound and the two threads contend for
    # the GIL (P=128 measured 0.95-0.99x here, P=512 1.15x, on the shared machine)
    p.add_argument("--prompt", type=int, default=512, help="P tokens per prompt")
    p.add_argument("--median", type=int, default=16, help="median completion tokens")
    p.add_argument("--sigma", type=float, default=0.8, help="log-normal spread of completion lengths")
    p.add_argument("--cap", type=int, default=128, help="longest completion")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # one core each: engine thread, trainer thread (the producer inherits it)
    steps = args.steps or (6 if args.quick else 12)
    pairs = args.pairs or (1 if args.quick else 2)
    stalenesses = [int(s) for s in args.staleness.split(",")]
    switches = [float(s) for s in args.switch.split(",")] if args.switch else [DEFAULT_SWITCH]
    loaded = load(args.model)
    start_model, tok = loaded.model, loaded.tokenizer
    start_model.generation_config.eos_token_id = tok.eos_token_id
    kwargs = dict(group_size=args.group, temperature=1.0, median=args.median, sigma=args.sigma, cap=args.cap)
    gen = torch.Generator().manual_seed(0)
    draw = lambda: torch.randint(10, len(tok), (args.prompt,), generator=gen).tolist()  # noqa: E731
    prompts = [[draw() for _ in range(args.prompts)] for _ in range(steps)]
    seeds = [1000 + k for k in range(steps)]
    lengths = [TailedHF(**kwargs).budget(s) for s in seeds]
    print(f"# {args.model}, B={args.prompts} G={args.group} P={args.prompt}, {steps} steps, completion "
          f"lengths {lengths} (log-normal, median {args.median}, sigma {args.sigma}); kl {args.kl}; 1 torch "
          f"thread per thread; {os.cpu_count()} cores; {pairs} pair(s) per staleness")  # fmt: skip
    if args.gil:
        gil_profile(copy.deepcopy(start_model), tok, TailedHF(**kwargs), prompts, seeds, args.kl)
    configs = [(k, sw) for k in stalenesses for sw in switches]
    syncs: list[Arm] = []
    asyncs: dict[tuple[int, float], list[Arm]] = {c: [] for c in configs}
    pair_syncs: dict[tuple[int, float], list[Arm]] = {c: [] for c in configs}
    for rep in range(pairs):
        for k, sw in configs:
            load_avg = os.getloadavg()[0]
            one, two = spare_cores()
            print(f"# machine now: one torch thread gets {one:.2f} cores, two get {two:.2f}", flush=True)
            sync = sync_arm(copy.deepcopy(start_model), tok, TailedHF(**kwargs), prompts, seeds, args.kl)
            describe(f"sync (pair {rep}, load {load_avg:.1f})", sync, steps)
            engine = TailedHF(mode="async", max_staleness=k, **kwargs)
            sys.setswitchinterval(sw)
            try:
                arm = async_arm(
                    copy.deepcopy(start_model), tok, engine, prompts, seeds, args.kl, args.producer_threads
                )
            finally:
                sys.setswitchinterval(DEFAULT_SWITCH)
            describe(f"async {label(k, sw)} (pair {rep}, load {os.getloadavg()[0]:.1f})", arm, steps)
            syncs.append(sync)
            pair_syncs[(k, sw)].append(sync)
            asyncs[(k, sw)].append(arm)
    lines = []
    sync_wall = statistics.median(s.wall for s in syncs)
    for k, sw in configs:
        pred_sync, pred_async, _ = fitted_model(syncs, k)
        arms = list(zip(pair_syncs[(k, sw)], asyncs[(k, sw)]))
        ratios = [s.wall / a.wall for s, a in arms]
        ratio = statistics.median(ratios)
        print(f"# {label(k, sw)}: measured {ratio:.2f}x (pairs: {', '.join(f'{r:.2f}' for r in ratios)}); "
              f"token-count model (costs fitted on the sync arms): sync {pred_sync:.1f} s, async "
              f"{pred_async:.1f} s -> expected {pred_sync / pred_async:.2f}x")  # fmt: skip
        work = statistics.median(s.cpu / a.cpu for s, a in arms)
        par = statistics.median(a.cores / s.cores for s, a in arms)
        print(f"# {label(k, sw)}: measured = work x parallelism = CPU seconds sync / async {work:.2f}x "
              f"x cores used async / sync {par:.2f}x (the model's {pred_sync / pred_async:.2f}x needs "
              f"{pred_sync / pred_async:.2f} cores used for sync's 1)")  # fmt: skip
        name = "async_steps_per_s" if k == 1 else f"async_s{k}_steps_per_s"
        if sw != DEFAULT_SWITCH:
            name += f"_switch{sw:g}"
        wall = statistics.median(a.wall for a in asyncs[(k, sw)])
        lines.append(figure(name, ratio, steps / wall, steps / sync_wall))
        if k == 1 and sw == switches[0]:
            lines.append(
                figure("async_model_expected", pred_sync / pred_async, 1 / pred_async, 1 / pred_sync)
            )
    print(f"# threads alive: {threading.active_count()}; load average {os.getloadavg()}")
    return lines


if __name__ == "__main__":
    main()
