"""Measure a training step's peak memory on the CPU, to hold the plan to (tests, ``bench_memory.py``).

Each case builds a random-initialised model from a config dict (no weights loaded), gives AdamW its
moments, and runs one GRPO update through the trainer's own code (the learner, the shared-prompt packed
log-prob pass, the chunked LM head). The measure is the process's peak resident memory during the update
(``VmHWM``, reset through ``/proc/self/clear_refs`` before it) minus the resident memory with only the
parameters built: what the plan predicts as its peak minus its ``parameters`` term.

Run it in a fresh process with glibc told to return freed memory (:data:`MALLOC_ENV`), so the resident
size follows the live tensors: ``python -m longact_pl.memory.measure '<json list of cases>'`` prints one
JSON line per case.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import sys
from pathlib import Path

import torch

from longact_pl.memory.plan import Settings, plan_memory
from longact_pl.memory.shapes import ModelShape

# glibc: tensors above 128 KiB are mmapped (unmapped on free), the heap trimmed: RSS follows live memory
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072", "MALLOC_ARENA_MAX": "2"}
CONF = Path(__file__).resolve().parents[3] / "conf"


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _settle() -> int:
    """Collect garbage, hand freed heap back to the OS; the resident bytes after."""
    gc.collect()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return _rss("VmRSS")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def case_settings(case: dict) -> Settings:
    """The plan's settings for one measured case (single CPU process, packed shared prompt)."""
    return Settings(
        prompt_tokens=case["prompt"], completion_tokens=case["group"] * case["completion"],
        completion_rows=case["group"], precision=case["precision"], activation_checkpointing=case["ckpt"],
        logprob_chunk=case.get("chunk", 1024), optimizer="single_tensor", device="cpu",
        interleaved=case.get("interleave", True),
    )  # fmt: skip


def planned(case: dict) -> int:
    """What the measure compares with: the planned peak minus the parameters."""
    plan = plan_memory(ModelShape.from_config(case["config"]), case_settings(case))
    return plan.peak - plan.term("parameters")


def _model(config: dict, ckpt: bool):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**config)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def _learner(group: int, chunk: int | None, interleave: bool = True):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from longact_pl.guards import NonFiniteGuard
    from longact_pl.learner import Learner
    from longact_pl.ops.logprob_plan import LogprobPlan
    from longact_pl.ops.policy_logprobs import LogprobPass

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["algo=grpo", "algo.kl_coef=0"])
    plan = LogprobPlan("packed", "sdpa", chunk_size=chunk, reason="memory.measure", interleave=interleave)
    passes = LogprobPass(plan)
    return Learner(instantiate(cfg.algo), passes, NonFiniteGuard(), 1.0, micro_batch_size=group)


def _batch(vocab: int, prompt: int, group: int, completion: int):
    from longact_pl.learner import TrainBatch
    from longact_pl.rollout.types import RolloutBatch

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(10, vocab, (group, prompt + completion), generator=gen)  # [G, P + C]
    ids[:, :prompt] = ids[0, :prompt]
    mask = torch.ones_like(ids)  # [G, P + C]
    ro = RolloutBatch(
        input_ids=ids, attention_mask=mask, completion_mask=mask[:, prompt:],
        behaviour_logp=torch.zeros(group, completion), completions=[""] * group, prompt_width=prompt,
        group_size=group,
    )  # fmt: skip
    return TrainBatch(ro, torch.linspace(-1.0, 1.0, group))  # advantages [G]


def measure_case(case: dict) -> int:
    """Peak resident bytes of one update above the parameters (see the module docstring)."""
    from longact_pl.distributed import LocalOps
    from longact_pl.learner import OptimizerCalls
    from longact_pl.optim import optimizer_step

    learner = _learner(case["group"], case.get("chunk", 1024), case.get("interleave", True))
    batch = _batch(case["config"]["vocab_size"], case["prompt"], case["group"], case["completion"])
    model = _model(case["config"], case["ckpt"])
    base = _settle()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    for p in model.parameters():  # AdamW's moments exist from the second step on: allocate them now
        p.grad = torch.zeros_like(p)
    optimizer.step()
    # gradients kept (zeroed): the update runs as a later micro-batch of an accumulating step, which the
    # plan describes (the first micro-batch of a step has no gradients yet until its backward makes them)
    optimizer.zero_grad(set_to_none=False)
    _settle()
    _reset_peak()
    calls = OptimizerCalls(
        backward=lambda loss: loss.backward(),
        step=lambda: optimizer_step(optimizer, schedule),
        zero_grad=lambda: optimizer.zero_grad(set_to_none=True),
        skip=lambda: None,
    )
    amp = case["precision"].endswith("-mixed")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        learner.update(model, batch, calls, LocalOps(), torch.Generator().manual_seed(0))
    return _rss("VmHWM") - base


def main(argv: list[str]) -> None:
    """``main([json cases, threads])``: one JSON line per case (``name``, ``measured``, ``planned`` bytes)."""
    torch.set_num_threads(int(argv[1]) if len(argv) > 1 else torch.get_num_threads())
    for case in json.loads(argv[0]):
        measured = measure_case(case)
        _settle()
        print(json.dumps({"name": case["name"], "measured": measured, "planned": planned(case)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
