"""Async rollouts (``rollout.mode=async``, staleness 1) vs the synchronous loop: steps/s and idle fractions.

Both arms run the same RL steps on the same prompts: HF sampling of B prompts x G completions with a
long-tailed completion length per batch (log-normal token budgets, EOS off so every row runs to the budget),
then the learner's step (AdamW, token TIS correction). Torch uses one thread per Python thread, so the
two cores are split between the engine and the trainer: the synchronous arm runs them one after the other
(each phase on one core), the async arm runs the producer thread (:class:`AsyncRollouts`) beside the
trainer. Idle fraction = 1 - busy seconds / wall seconds, for the engine and for the trainer.

The token-count model fits two costs on the synchronous arm (engine seconds per decoded column of a batch,
trainer seconds per trained token) and predicts both arms' wall time from each step's token counts: sync =
sum(g_k + t_k); async = g_0 + sum_k max(g_{k+1}, t_k) (the last step's t alone), i.e. the expected gain
when generation and training overlap perfectly on separate cores.

    python scripts/bench/bench_async.py            # small random Llama, 12 steps
    python scripts/bench/bench_async.py --quick    # 6 steps

Prints ``async_steps_per_s ratio=<a/b> a=<async steps/s> b=<sync steps/s>`` and the model's ratio.
"""

from __future__ import annotations

import argparse
import copy
import math
import time

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


class TailedHF(HFRollout):
    """HF sampling whose token budget per batch is long-tailed (log-normal), seeded by the batch's seed."""

    def __init__(self, median: int, sigma: float, cap: int, **kwargs) -> None:
        super().__init__(max_new_tokens=cap, **kwargs)
        self.median, self.sigma, self.cap = median, sigma, cap

    def budget(self, seed: int) -> int:
        """The batch's completion length: log-normal around ``median``, capped."""
        z = torch.randn(1, generator=torch.Generator().manual_seed(seed)).item()
        return max(2, min(self.cap, round(self.median * math.exp(self.sigma * z))))

    def generate(self, policy, tokenizer, prompts, greedy=False, seed=0, max_new_tokens=None):
        return super().generate(policy, tokenizer, prompts, greedy, seed, max_new_tokens or self.budget(seed))


class Trainer:
    """One learner step per batch, timed."""

    def __init__(self, policy, temperature: float) -> None:
        self.policy = policy
        passes = LogprobPass.for_model(policy, shared_prefix=True, chunk_size=None)
        self.learner = Learner(
            GroupPolicyGradient(kl_coef=0.0), passes,
            NonFiniteGuard(3), temperature, correction=RolloutCorrection(level=TokenRatio()), external=True,
            micro_batch_size=8,
        )  # fmt: skip
        self.opt = torch.optim.AdamW(policy.parameters(), lr=1e-5)
        self.busy = 0.0
        self.times: list[float] = []

    def step(self, batch, k: int) -> None:
        start = time.perf_counter()
        ids = batch.input_ids[:, batch.prompt_width :] * batch.completion_mask  # [N, C]
        rewards = (ids.sum(-1) % 2).float()  # [N]: mixed
        calls = OptimizerCalls(lambda loss: loss.backward(), self.opt.step,
                               lambda: self.opt.zero_grad(set_to_none=True), lambda: None)  # fmt: skip
        train = self.learner.prepare(self.policy, None, batch, rewards)
        self.learner.update(self.policy, train, calls, LocalOps(), torch.Generator().manual_seed(k))
        self.times.append(time.perf_counter() - start)
        self.busy += self.times[-1]


def run_sync(policy, tok, engine, prompts, seeds):
    trainer, gen_times, tokens, cols = Trainer(policy, engine.temperature), [], [], []
    start = time.perf_counter()
    for k, (p, s) in enumerate(zip(prompts, seeds)):
        t0 = time.perf_counter()
        batch = engine.generate(policy, tok, p, seed=s)
        gen_times.append(time.perf_counter() - t0)
        cols.append(batch.completion_mask.shape[1])
        tokens.append(int(batch.attention_mask.sum()))
        trainer.step(batch, k)
    wall = time.perf_counter() - start
    return wall, sum(gen_times), trainer.busy, gen_times, trainer.times, cols, tokens


def run_async(policy, tok, engine, prompts, seeds):
    trainer = Trainer(policy, engine.temperature)
    rollouts = AsyncRollouts(engine, tok, policy, engine.schedule)
    lags = []
    start = time.perf_counter()
    try:
        for k in range(len(prompts)):
            if k + 1 < len(prompts):
                rollouts.submit(k + 1, prompts[k + 1], seeds[k + 1])
            got = rollouts.take(k, prompts[k], seeds[k])
            lags.append(rollouts.version - got.oldest)
            trainer.step(got.batch, k)
            rollouts.publish(policy)
    finally:
        rollouts.close()
    return time.perf_counter() - start, rollouts.busy_s, trainer.busy, lags


def token_model(gen, train, cols, tokens) -> tuple[float, float, float]:
    """Fitted per-column / per-token costs -> (predicted sync s, predicted async s, ratio)."""
    c_gen, c_train = sum(gen) / sum(cols), sum(train) / sum(tokens)
    g = [c_gen * c for c in cols]
    t = [c_train * n for n in tokens]
    sync = sum(g) + sum(t)
    overlap = g[0] + sum(max(g[k + 1], t[k]) for k in range(len(g) - 1)) + t[-1]
    return sync, overlap, sync / overlap


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps")
    p.add_argument("--model", default="small_llama", help="small_llama | tiny_llama | tiny_qwen3")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--prompts", type=int, default=2, help="B")
    p.add_argument("--group", type=int, default=4, help="G")
    # P=512: with short prompts a small model's HF decoding is Python-bound and the two threads contend for
    # the GIL (P=128 measured 0.95-0.99x here, P=512 1.15x, on the shared machine)
    p.add_argument("--prompt", type=int, default=512, help="P tokens per prompt")
    p.add_argument("--median", type=int, default=16, help="median completion tokens")
    p.add_argument("--sigma", type=float, default=0.8, help="log-normal spread of completion lengths")
    p.add_argument("--cap", type=int, default=128, help="longest completion")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # one core each: engine thread, trainer thread
    steps = args.steps or (6 if args.quick else 12)
    loaded = load(args.model)
    start_model, tok = loaded.model, loaded.tokenizer
    start_model.generation_config.eos_token_id = tok.eos_token_id
    kwargs = dict(group_size=args.group, temperature=1.0, median=args.median, sigma=args.sigma, cap=args.cap)
    gen = torch.Generator().manual_seed(0)
    draw = lambda: torch.randint(10, len(tok), (args.prompt,), generator=gen).tolist()  # noqa: E731
    prompts = [[draw() for _ in range(args.prompts)] for _ in range(steps)]
    seeds = [1000 + k for k in range(steps)]
    sync_engine = TailedHF(**kwargs)
    lengths = [sync_engine.budget(s) for s in seeds]
    print(f"# {args.model}, B={args.prompts} G={args.group} P={args.prompt}, {steps} steps, completion "
          f"lengths {lengths} (log-normal, median {args.median}, sigma {args.sigma}); 1 torch thread per "
          "thread")  # fmt: skip
    wall_s, gen_s, train_s, gens, trains, cols, tokens = run_sync(
        copy.deepcopy(start_model), tok, sync_engine, prompts, seeds
    )
    wall_a, gen_a, train_a, lags = run_async(
        copy.deepcopy(start_model), tok, TailedHF(mode="async", max_staleness=1, **kwargs), prompts, seeds
    )
    for name, wall, g, t in (("sync", wall_s, gen_s, train_s), ("async", wall_a, gen_a, train_a)):
        print(f"# {name}: {steps / wall:.3f} steps/s, wall {wall:.1f} s, engine busy {g:.1f} s (idle "
              f"{1 - g / wall:.0%}), trainer busy {t:.1f} s (idle {1 - t / wall:.0%})")  # fmt: skip
    print(f"# async version lag per step: {lags}")
    pred_sync, pred_async, pred = token_model(gens, trains, cols, tokens)
    print(f"# token-count model (costs fitted on the sync arm): sync {pred_sync:.1f} s, async "
          f"{pred_async:.1f} s -> expected {pred:.2f}x; measured {wall_s / wall_a:.2f}x")  # fmt: skip
    lines = [
        figure("async_steps_per_s", (steps / wall_a) / (steps / wall_s), steps / wall_a, steps / wall_s),
        figure("async_model_expected", pred, 1 / pred_async, 1 / pred_sync),
    ]
    return lines


if __name__ == "__main__":
    main()
