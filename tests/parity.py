"""The parity matrix: option layouts that must not change the numbers, against one padded process.

Nine binary factors. Five only change how the work is laid out (packing, token-budget micro-batches,
micro-batches smaller than a group, sequence parallelism, data parallelism): each configuration must apply
the gradients of its *reference*, one process running padded, whole-group micro-batches with the same
algorithmic settings. Four change the algorithm (mask refresh, entropy bonus, rollout correction, PPO
epochs): they are varied so that every pair of settings, layout and algorithm alike, meets in at least one
configuration (a strength-2 covering array, :func:`covering_design`).

Each run is the real training entry for 2 optimizer steps in fp32: ``train.py`` in a subprocess where
Lightning launches the ranks (FSDP2) for more than one process, ``longact_pl.train.run`` (what ``train.py``
calls) in this process for one. The model is a tiny Llama with GQA (6 query heads over 2 key/value heads,
head size 8) and an odd vocabulary (49,157 rows), with per-prompt seeded rollouts cut at random lengths (1
to 12 tokens) and a parity reward (mixed values). Prompts are dealt by data-parallel rank, so the ranks'
batches of a step are the single process's batch (``tests.distributed_helpers.RankShardedData``) and their
rollouts are the single process's rollouts (``PerPromptRollout``: each prompt generated alone, seeded by its
tokens). ``longact_pl.diagnostics.GradDump`` writes the applied gradient (masked, clipped, FSDP shards
gathered) and the masks of every step; ``metrics.csv`` holds the logged metrics.

Used by tests/test_parity_matrix.py and scripts/parity_matrix.py (which writes docs/parity.md).
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import random
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.helpers import ROOT, child_env, compose_train

GROUP = 4  # completions per prompt
PROMPTS = 2  # prompts per step, over all data-parallel ranks
PROMPT_TOKENS = 128  # target prompt length
MAX_NEW = 12  # generation budget; completions are cut at seeded random lengths in [1, 12]
MAX_PROMPT = 132  # data.max_prompt_tokens (the token budget must hold it plus MAX_NEW)
BUDGET = MAX_PROMPT + MAX_NEW  # a group of 4 completions does not fit: it is split by completions
# ||g - g_ref|| / ||g_ref|| at steps 1 and 2, fp32. Step 1 differs by summation order only; step 2 also by
# AdamW's first update, ~lr * sign(g), which flips where |g| is near rounding (measured up to 2e-5)
GRAD_RTOL = (1e-5, 1e-4)
METRIC_RTOL, METRIC_ATOL = 1e-4, 1e-6
TIMING = ("tokens_per_s", "time", "_sec", "per_s")  # metrics that measure the clock, not the numbers

COMMON = [
    "model=tiny_llama",
    "model.hidden_size=48",
    "model.heads=6",
    "model.kv_heads=2",
    "model.vocab_size=49157",
    "seed=42",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.max_steps=2",
    "+trainer.limit_val_batches=0",
    "validate_before_training=false",
    "callbacks.model_checkpoint.save_last=false",
    "data._target_=tests.distributed_helpers.RankShardedData",
    "trainer.use_distributed_sampler=false",
    f"data.train.lengths=[{PROMPT_TOKENS}]",
    f"data.max_prompt_tokens={MAX_PROMPT}",
    "data.reward._target_=tests.helpers.ParityReward",
    "rollout=hf",
    "rollout._target_=tests.distributed_helpers.ExternalPerPromptRollout",
    "+rollout.shift=0.05",
    f"rollout.group_size={GROUP}",
    f"rollout.max_new_tokens={MAX_NEW}",
    "algo=grpo",
    "algo.aggregation=token_mean",
    "masking=saliency",
    "masking.ratio=0.5",
    "masking.calib_samples=2",
    "masking.ema=0.5",
    "module.optimizer.lr=1e-3",
]


@dataclass(frozen=True)
class Factor:
    """One option: its name in the table, its reference level and the other one (Hydra overrides each)."""

    name: str
    levels: tuple[str, str]  # shown in the table: reference level first
    layout: bool  # True: must not change the numbers; False: the reference runs it too


FACTORS = (
    Factor("pack", ("off", "on"), True),
    Factor("token_budget", ("off", f"{BUDGET}"), True),
    Factor("micro_batch", (f"{GROUP}", f"{GROUP // 2}"), True),
    Factor("sp", ("1", "2"), True),
    Factor("dp", ("1", "2"), True),
    Factor("refresh", ("0", "1"), False),
    Factor("entropy", ("0", "0.01"), False),
    Factor("correction", ("none", "token_tis"), False),
    Factor("ppo_epochs", ("1", "2"), False),
)
LAYOUT = tuple(i for i, f in enumerate(FACTORS) if f.layout)


def uncovered_pairs(rows: list[tuple[int, ...]]) -> list[tuple[int, int, int, int]]:
    """``(factor a, level a, factor b, level b)`` of every pair of settings no row holds."""
    k = len(FACTORS)
    seen = {(a, r[a], b, r[b]) for r in rows for a, b in itertools.combinations(range(k), 2)}
    every = itertools.product(range(k), (0, 1), range(k), (0, 1))
    return [p for p in every if p[0] < p[2] and p not in seen]


def world_size(row: tuple[int, ...]) -> int:
    """Processes the row runs on: data-parallel x sequence-parallel ranks."""
    return (1 + row[3]) * (1 + row[4])


def reference_of(row: tuple[int, ...]) -> tuple[int, ...]:
    """The row with every layout factor at its reference level (one process, padded, whole groups)."""
    return tuple(0 if i in LAYOUT else level for i, level in enumerate(row))


def _cost(rows: list[tuple[int, ...]]) -> float:
    """Processes started: the rows' ranks plus one per distinct reference; a row that is its own
    reference compares nothing (counted as infinitely expensive)."""
    if any(reference_of(r) == r for r in rows):
        return math.inf
    return sum(world_size(r) for r in rows) + len({reference_of(r) for r in rows})


def covering_design(rows: int = 6, tries: int = 3000, seed: int = 0) -> list[tuple[int, ...]]:
    """A strength-2 covering array of the 9 binary factors in 6 rows, the cheapest of ``tries`` candidates.

    The columns are distinct 6-bit words of weight 3 that start with 0 (there are 10): any two cover
    (0, 0) in the first row, (1, 0) and (0, 1) where they differ, and (1, 1) because two 3-element subsets
    of 5 positions meet. Complementing a column keeps that, so candidates are random choices of 9 columns,
    their order over the factors and complements; the one starting the fewest processes
    (:func:`_cost`) wins. Deterministic.
    """
    words = [w for w in itertools.product((0, 1), repeat=rows) if w[0] == 0 and sum(w) == rows // 2]
    rng = random.Random(seed)
    best, best_cost = None, math.inf
    for _ in range(tries):
        columns = rng.sample(words, len(FACTORS))
        columns = [tuple(1 - b for b in c) if rng.random() < 0.5 else c for c in columns]
        design = sorted(zip(*columns))
        if _cost(design) < best_cost:
            best, best_cost = design, _cost(design)
    if best is None or uncovered_pairs(best):
        raise RuntimeError(f"no covering array of {rows} rows found in {tries} tries")
    return best


def overrides(row: tuple[int, ...]) -> list[str]:
    """The Hydra overrides of one configuration (on top of :data:`COMMON`)."""
    pack, budget, micro, sp, dp, refresh, entropy, correction, epochs = row
    world = (1 + sp) * (1 + dp)
    out = [
        f"module.logprobs.pack_completions={'true' if pack else 'false'}",
        f"module.learner.micro_batch_tokens={BUDGET if budget else 'null'}",
        f"module.learner.micro_batch_size={GROUP // 2 if micro else GROUP}",
        f"data.batch_size={PROMPTS // (1 + dp)}",
        f"masking.refresh_every={refresh}",
        f"algo.entropy_coef={0.01 if entropy else 0.0}",
        f"correction={'token_tis' if correction else 'none'}",
        f"module.learner.ppo_epochs={1 + epochs}",
    ]
    if world > 1:
        out += [
            "strategy=fsdp",
            f"trainer.devices={world}",
            f"trainer.strategy.sequence_parallel_size={1 + sp}",
        ]
    return out


def label(row: tuple[int, ...]) -> str:
    """``pack=on token_budget=off ...``: the row's settings."""
    return " ".join(f"{f.name}={f.levels[level]}" for f, level in zip(FACTORS, row))


@dataclass
class RunResult:
    """What one ``train.py`` run left: per-step gradients and masks, logged metric rows, or its error."""

    grads: list[dict[str, torch.Tensor]]
    masks: list[dict[str, torch.Tensor]]
    metrics: list[dict[str, float]]
    error: str | None
    seconds: float


def run(run_dir: Path, row: tuple[int, ...], timeout: int = 420) -> RunResult:
    """Train the row's configuration and read back what it wrote.

    A one-process configuration runs ``longact_pl.train.run`` (what ``train.py`` calls) in this process,
    saving a Python start with its imports (most of a tiny run's time); a multi-process one runs ``train.py``
    in a subprocess, where Lightning launches its ranks.
    """
    dump = [
        "+callbacks.grad_dump._target_=longact_pl.diagnostics.GradDump",
        f"+callbacks.grad_dump.out_dir={run_dir / 'grads'}",
    ]
    if world_size(row) == 1:
        return _run_here(run_dir, [*COMMON, *overrides(row), *dump])
    cmd = [sys.executable, "train.py", f"hydra.run.dir={run_dir}", *COMMON, *overrides(row), *dump]
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own process group: a hung run's ranks are killed together
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return RunResult([], [], [], f"no result after {timeout} s (hung)", time.perf_counter() - start)
    seconds = time.perf_counter() - start
    (run_dir / "train.log").write_text(out)
    if proc.returncode != 0:
        lines = [x for x in out.splitlines() if "Error" in x or "error" in x]
        return RunResult([], [], [], (lines or [f"exit code {proc.returncode}"])[-1][:300], seconds)
    return _read(run_dir, seconds)


def _run_here(run_dir: Path, args: list[str]) -> RunResult:
    """``train.run`` on the composed config in this process (one rank: nothing to launch)."""
    from longact_pl.train import run as train

    start = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "train.log", "w") as log, redirect_stdout(log), redirect_stderr(log):
        try:
            train(compose_train(run_dir, *args, tiny=False), run_dir)
        except Exception as err:  # noqa: BLE001 - a failed run is a FAIL row naming its error
            return RunResult([], [], [], f"{type(err).__name__}: {err}"[:300], time.perf_counter() - start)
    return _read(run_dir, time.perf_counter() - start)


def _read(run_dir: Path, seconds: float) -> RunResult:
    """The gradients and masks ``GradDump`` wrote at steps 1 and 2, and the logged training rows."""
    grads, masks = [], []
    for step in (1, 2):
        tensors = load_file(run_dir / "grads" / f"step{step}.safetensors")
        grads.append({k[5:]: v for k, v in tensors.items() if k.startswith("grad/")})
        masks.append({k[5:]: v for k, v in tensors.items() if k.startswith("mask/")})
    with open(run_dir / "metrics.csv") as f:
        metrics = [
            {k: float(v) for k, v in r.items() if v not in ("", None) and k not in ("epoch", "step")}
            for r in csv.DictReader(f)
            if r.get("train/loss")
        ]
    return RunResult(grads, masks, metrics, None, seconds)


def grad_error(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    """``||got - want|| / ||want||`` over all parameters together (inf when the parameter sets differ)."""
    if set(got) != set(want):
        return math.inf
    diff = math.sqrt(sum(float((got[k] - w).pow(2).sum()) for k, w in want.items()))
    norm = math.sqrt(sum(float(w.pow(2).sum()) for w in want.values()))
    return diff / norm if norm > 0 else (math.inf if diff > 0 else 0.0)


def masks_equal(got: list[dict[str, torch.Tensor]], want: list[dict[str, torch.Tensor]]) -> bool:
    """Every step's masks: the same targets, identical rows."""
    return len(got) == len(want) and all(
        set(g) == set(w) and all(torch.equal(g[k], w[k]) for k in w) for g, w in zip(got, want)
    )


def metric_mismatches(got: list[dict[str, float]], want: list[dict[str, float]]) -> list[str]:
    """``step<N>:<metric> got vs want`` for every logged metric that differs (timing metrics skipped)."""
    if len(got) != len(want):
        return [f"{len(got)} logged steps vs {len(want)}"]
    out = []
    for step, (g, w) in enumerate(zip(got, want), 1):
        for key in sorted(set(g) | set(w)):
            if any(t in key for t in TIMING):
                continue
            a, b = g.get(key), w.get(key)
            if a is None or b is None or not math.isclose(a, b, rel_tol=METRIC_RTOL, abs_tol=METRIC_ATOL):
                out.append(f"step{step}:{key} {a} vs {b}")
    return out


@dataclass
class Verdict:
    """One row of the table."""

    row: tuple[int, ...]
    grad_errors: tuple[float, float]
    masks_equal: bool
    metric_mismatches: list[str]
    error: str | None
    seconds: float

    @property
    def passed(self) -> bool:
        """Gradients within :data:`GRAD_RTOL` at both steps, masks identical, metrics equal, no error."""
        return (
            self.error is None
            and all(e <= tol for e, tol in zip(self.grad_errors, GRAD_RTOL))
            and self.masks_equal
            and not self.metric_mismatches
        )


def compare(row: tuple[int, ...], got: RunResult, want: RunResult) -> Verdict:
    """The row's run against its reference's."""
    error = got.error or (f"reference: {want.error}" if want.error else None)
    if error:
        return Verdict(row, (math.inf, math.inf), False, [], error, got.seconds)
    if not all(any(float(g.abs().max()) > 0 for g in step.values()) for step in want.grads):
        return Verdict(row, (math.inf, math.inf), False, [], "reference gradient is zero", got.seconds)
    errors = tuple(grad_error(g, w) for g, w in zip(got.grads, want.grads))
    return Verdict(
        row, errors, masks_equal(got.masks, want.masks), metric_mismatches(got.metrics, want.metrics), None,
        got.seconds,
    )  # fmt: skip


def run_matrix(out_dir: Path, design: list[tuple[int, ...]] | None = None, log=print) -> list[Verdict]:
    """Run every distinct reference and every row of ``design`` under ``out_dir``; compare."""
    design = design or covering_design()
    results: dict[tuple[int, ...], RunResult] = {}
    for i, ref in enumerate(sorted({reference_of(r) for r in design})):
        results[ref] = run(out_dir / f"ref{i}", ref)
        log(f"reference {label(ref)}: {results[ref].error or 'ok'} ({results[ref].seconds:.0f} s)")
    verdicts = []
    for i, row in enumerate(design):
        verdict = compare(row, run(out_dir / f"row{i}", row), results[reference_of(row)])
        verdicts.append(verdict)
        log(f"row {i}: {label(row)}: {'PASS' if verdict.passed else 'FAIL'} ({verdict.seconds:.0f} s)")
    return verdicts


def table(verdicts: list[Verdict]) -> str:
    """The matrix as a Markdown table: settings, gradient errors, masks, metrics, verdict."""
    head = [f.name for f in FACTORS] + ["ranks", "grad err step 1", "grad err step 2", "masks", "metrics", ""]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in verdicts:
        cells = [f.levels[level] for f, level in zip(FACTORS, v.row)] + [str(world_size(v.row))]
        if v.error:
            cells += ["-", "-", "-", f"error: {v.error}"]
        else:
            metrics = "equal" if not v.metric_mismatches else "; ".join(v.metric_mismatches[:3])
            cells += [f"{e:.1e}" for e in v.grad_errors] + ["equal" if v.masks_equal else "DIFFER", metrics]
        cells.append("PASS" if v.passed else "FAIL")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
