"""GPU acceptance figures: one GRPO training step of a Qwen3-4B-shaped model at long context.

A random model built from Qwen3-4B's config (no weights needed for speed and memory) trains one GRPO step on
one prompt group (``--prompts`` tokens, ``--group`` completions of ``--completion`` tokens each) through the
trainer's own code: the learner's update (forward + backward + AdamW), the shared-prompt log-prob pass with
the completions packed in one row and a chunked LM head, LongAct saliency masks (q_proj/k_proj rows, ratio
0.3, calibrated on the prompt), fp32 master weights under bf16 autocast and gradient checkpointing. Each
prompt length gets a warm-up step, then a timed step. Printed, one line each (``name value=...``):

* ``matmul_bf16_tflops``: an 8192^3 bf16 matrix product on this device (the achievable ceiling);
* ``grpo_step_<P>_seconds``, ``..._tokens_per_s`` (prompt once + completions, per second), ``..._mfu``
  (model FLOPs of forward + backward, no recomputation, over time x ``PEAK_BF16_FLOPS``),
  ``..._peak_mem_gib`` (``torch.cuda.max_memory_allocated`` during the timed step); ``value=oom`` when the
  step does not fit (a failed figure: the check exits non-zero);
* ``longact_masked_rows_exact``: whether every masked row of q_proj/k_proj is bit-identical to its initial
  value after the steps (LongAct's exactness on this device); ``unknown`` when no length ran;
* ``result NAME PASS|FAIL planned=... measured=...``: one summary row per figure (an OOM or any error is a
  FAIL): the memory plan's peak (``longact_pl.memory``, the settings of this step) beside the measured
  ``max_memory_allocated``, and their ratio (``plan_ratio=planned/measured``).

Exits non-zero when any figure failed or exactness is not ``true``.

``--dry`` runs the same code on the CPU with tiny shapes (memory and MFU are then not meaningful):

    python scripts/gpu_check.py                # on a GPU: P=8192, 16384 and 32768, G=8, C=1024
    python scripts/gpu_check.py --dry          # CPU, tiny Qwen3, P=64 and 128, G=2, C=16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from transformers import Qwen3Config, Qwen3ForCausalLM

from longact_pl.distributed import LocalOps
from longact_pl.guards import NonFiniteGuard
from longact_pl.learner import Learner, OptimizerCalls, TrainBatch
from longact_pl.masking.apply import RowFreezer
from longact_pl.masking.calibrate import collect_stats
from longact_pl.masking.selection import TopK, select_units
from longact_pl.masking.targets import find_targets
from longact_pl.memory.plan import GIB, Settings, plan_memory
from longact_pl.memory.shapes import ModelShape
from longact_pl.ops.logprob_plan import LogprobPlan
from longact_pl.ops.policy_logprobs import LogprobPass
from longact_pl.rollout.types import RolloutBatch

CONF = Path(__file__).resolve().parents[1] / "conf"

# Qwen3-4B (config.json of Qwen/Qwen3-4B), positions extended to 64k + completions
QWEN3_4B = dict(
    vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=69632, rope_theta=1_000_000.0,
    rms_norm_eps=1e-6, tie_word_embeddings=True,
)  # fmt: skip
TINY = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=1024, tie_word_embeddings=True,
)  # fmt: skip
# Dense bf16 peak of an H100 / H200 SXM (NVIDIA datasheet: 989.4 TFLOP/s; 1979 is with 2:4 sparsity).
PEAK_BF16_FLOPS = 989.4e12


def line(name: str, value) -> None:
    """Print one ``name value=...`` figure."""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    print(f"{name} value={text}", flush=True)


def build_model(shape: dict, device: torch.device, seed: int = 0) -> Qwen3ForCausalLM:
    """A random Qwen3 of ``shape`` (fp32 master weights) on ``device``, with gradient checkpointing."""
    config = Qwen3Config(**shape, layer_types=None)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with device:
        model = Qwen3ForCausalLM(config)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def synthetic_rollouts(vocab: int, prompt: int, group: int, completion: int, device) -> RolloutBatch:
    """One group: a random ``prompt``-token prompt shared by ``group`` full-length completions."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(10, vocab, (group, prompt + completion), generator=gen)  # [G, P + C]
    ids[:, :prompt] = ids[0, :prompt]
    mask = torch.ones_like(ids)  # [G, P + C]
    return RolloutBatch(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        completion_mask=mask[:, prompt:].to(device),
        behaviour_logp=torch.zeros(group, completion, device=device),
        completions=[""] * group,
        prompt_width=prompt,
        group_size=group,
    )


def step_flops(shape: dict, prompt: int, completions: list[int]) -> float:
    """Model FLOPs of forward + backward (3x forward, no recomputation) of one shared-prompt group.

    Tokens computed: the prompt once and every completion token. Per token and layer the projections and the
    MLP cost ``2 x`` their weights; each attended (query, key) pair ``4 x heads x head_dim`` (scores and
    values; causal: the prompt attends to its past, completions to the prompt and their own past). The LM
    head runs on the completion tokens only.
    """
    hidden, inter, heads = shape["hidden_size"], shape["intermediate_size"], shape["num_attention_heads"]
    kv, dim, layers = shape["num_key_value_heads"], shape["head_dim"], shape["num_hidden_layers"]
    tokens = prompt + sum(completions)
    linear = 2 * (hidden * dim * (2 * heads + 2 * kv) + 3 * hidden * inter)  # per token and layer
    pairs = prompt * (prompt + 1) / 2 + sum(c * prompt + c * (c + 1) / 2 for c in completions)
    forward = layers * (linear * tokens + 4 * heads * dim * pairs) + 2 * hidden * shape["vocab_size"] * sum(
        completions
    )
    return 3.0 * forward


def longact_masks(model, prompt_ids: torch.Tensor, ratio: float = 0.3) -> tuple[dict, dict]:
    """LongAct row masks of each q_proj/k_proj: top ``ratio`` channels by mean |activation| on the prompt."""
    targets = find_targets(model, ("q_proj", "k_proj"))
    stats = collect_stats(model, targets, [prompt_ids.tolist()], bf16=True)
    scores = {name: s.statistic("mean_abs") for name, s in stats.items()}
    groups: dict[str, list[str]] = {}
    for t in targets:
        groups.setdefault(t.group, []).append(t.name)
    masks = select_units(scores, groups, TopK(), ratio)  # channel units: one per row
    return {t.name: t.linear for t in targets}, masks


def grpo_learner(group: int) -> Learner:
    """The trainer's learner with ``algo=grpo`` (no KL term: no reference pass in the step)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["algo=grpo", "algo.kl_coef=0"])
    algorithm = instantiate(cfg.algo)
    # the packed path the trainer plans for Qwen3 with sdpa attention (the model every length loads)
    passes = LogprobPass(LogprobPlan("packed", "sdpa", chunk_size=1024, reason="gpu_check: packed"))
    return Learner(algorithm, passes, NonFiniteGuard(), 1.0, micro_batch_size=group)


def grpo_step(model, optimizer, freezer: RowFreezer, learner: Learner, batch: TrainBatch, device) -> float:
    """One timed update (forward + backward + optimizer step); returns seconds."""
    calls = OptimizerCalls(
        backward=lambda loss: loss.backward(),
        step=lambda: (freezer.mask_grads(), optimizer.step()),
        zero_grad=lambda: optimizer.zero_grad(set_to_none=True),
        skip=lambda: None,
    )
    amp = torch.autocast(device.type, dtype=torch.bfloat16)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    with amp:
        learner.update(model, batch, calls, LocalOps(), torch.Generator().manual_seed(0))
    sync()
    return time.perf_counter() - start


def matmul_tflops(device: torch.device, size: int) -> float:
    """bf16 ``size^3`` matrix products per second (TFLOP/s), mean of 10 after 3 warm-ups."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    sync()
    return 2 * size**3 * 10 / (time.perf_counter() - start) / 1e12


def one_length(args, shape: dict, device: torch.device, prompt: int, learner: Learner) -> tuple[float, bool]:
    """Warm-up step, then a timed one, at one prompt length; ``(seconds, masked rows exact)``."""
    model = build_model(shape, device)
    ro = synthetic_rollouts(shape["vocab_size"], prompt, args.group, args.completion, device)
    linears, masks = longact_masks(model, ro.input_ids[0, :prompt])
    before = {n: lin.weight.detach().clone() for n, lin in linears.items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=device.type == "cuda")
    freezer = RowFreezer()
    freezer.set_masks(linears, masks)
    freezer.attach([optimizer])
    batch = TrainBatch(ro, torch.linspace(-1.0, 1.0, args.group, device=device))  # advantages [G]
    try:
        grpo_step(model, optimizer, freezer, learner, batch, device)  # warm-up (allocates AdamW states)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = grpo_step(model, optimizer, freezer, learner, batch, device)
    finally:
        freezer.detach()
    exact = True
    for n, lin in linears.items():  # masked rows bit-identical, trained rows moved
        keep = masks[n].to(device)
        exact &= torch.equal(lin.weight.detach()[~keep], before[n][~keep])
        exact &= not torch.equal(lin.weight.detach()[keep], before[n][keep])
    return seconds, exact


def planned_peak(shape: dict, prompt: int, group: int, completion: int, device: torch.device) -> float:
    """The memory plan's peak (GiB) of :func:`one_length`'s step.

    One group, packed, bf16-mixed, checkpointing, LM-head chunks of 1024, fused AdamW on CUDA (single-tensor
    on the CPU), LongAct freezing 70% of the q/k rows.
    """
    settings = Settings(
        prompt_tokens=prompt, completion_tokens=group * completion, completion_rows=group,
        precision="bf16-mixed", activation_checkpointing=True, logprob_chunk=1024,
        optimizer="fused" if device.type == "cuda" else "single_tensor", device=device.type,
        frozen_fraction=0.7,
    )  # fmt: skip
    return plan_memory(ModelShape.from_config({**shape, "model_type": "qwen3"}), settings).peak / GIB


def result(name: str, ok: bool, peak, detail: str = "", planned: float | None = None) -> None:
    """One row of the summary table: ``result NAME PASS|FAIL planned=... measured=... detail``."""
    measured = f"{peak:.1f}GiB" if isinstance(peak, float) else str(peak)
    plan = "-" if planned is None else f"{planned:.1f}GiB"
    if planned is not None and isinstance(peak, float) and peak > 0:
        detail = f"plan_ratio={planned / peak:.2f} {detail}"
    print(f"result {name} {'PASS' if ok else 'FAIL'} planned={plan} measured={measured} "
          f"{detail}".rstrip(), flush=True)  # fmt: skip


def measure(args, shape: dict, device: torch.device) -> tuple[bool | None, bool]:
    """Every figure of the step at each prompt length.

    Returns:
        ``(exact, all_ok)``: whether the masked rows stayed bit-identical in every length that ran (``None``
        when none ran), and whether every length ran (an OOM or any error is a failed figure).
    """
    learner = grpo_learner(args.group)
    exact: bool | None = None
    all_ok = True
    for prompt in args.prompts:
        name = f"grpo_step_{prompt // 1024}k" if prompt >= 1024 else f"grpo_step_{prompt}"
        planned = planned_peak(shape, prompt, args.group, args.completion, device)
        line(f"{name}_planned_peak_gib", planned)
        try:
            seconds, ok = one_length(args, shape, device, prompt, learner)
        except torch.OutOfMemoryError:
            line(f"{name}_peak_mem_gib", "oom")
            result(name, False, "oom", "out_of_memory", planned)
            all_ok = False
            continue
        except Exception as err:  # noqa: BLE001 - a failed figure is reported as one, the others still run
            line(f"{name}_seconds", "error")
            result(name, False, "error", f"{type(err).__name__}: {err}".replace("\n", " ")[:200], planned)
            all_ok = False
            continue
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        exact = ok if exact is None else exact and ok
        flops = step_flops(shape, prompt, [args.completion] * args.group)
        line(f"{name}_seconds", seconds)
        line(f"{name}_tokens_per_s", (prompt + args.group * args.completion) / seconds)
        line(f"{name}_mfu", flops / seconds / PEAK_BF16_FLOPS)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else "n/a(cpu)"
        line(f"{name}_peak_mem_gib", peak)
        result(name, ok, peak, f"{seconds:.2f}s" + ("" if ok else " masked_rows_not_exact"), planned)
        all_ok &= ok
    return exact, all_ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry", action="store_true", help="CPU, tiny shapes: checks the code path, not the GPU")
    p.add_argument(
        "--prompts", default=None, help="comma-separated prompt lengths (default 8192,16384,32768)"
    )
    p.add_argument("--group", type=int, default=None, help="completions per prompt (default 8)")
    p.add_argument("--completion", type=int, default=None, help="tokens per completion (default 1024)")
    args = p.parse_args(argv)
    if not args.dry and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry for the CPU check of the code path")
    device = torch.device("cpu" if args.dry else "cuda")
    shape = TINY if args.dry else QWEN3_4B
    args.prompts = [
        int(x) for x in (args.prompts or ("64,128" if args.dry else "8192,16384,32768")).split(",")
    ]
    args.group = args.group or (2 if args.dry else 8)
    args.completion = args.completion or (16 if args.dry else 1024)
    print(f"# model={'tiny Qwen3' if args.dry else 'Qwen3-4B shapes'} random, fp32 weights, bf16 autocast, "
          f"gradient checkpointing; G={args.group} C={args.completion}; MFU against {PEAK_BF16_FLOPS:.4g} "
          "FLOP/s (H100/H200 SXM dense bf16)", flush=True)  # fmt: skip
    line("matmul_bf16_tflops", matmul_tflops(device, 256 if args.dry else 8192))
    exact, all_ok = measure(args, shape, device)
    line("longact_masked_rows_exact", "unknown" if exact is None else str(exact).lower())
    result("longact_masked_rows_exact", exact is True, "-", "nothing_ran" if exact is None else "")
    return 0 if all_ok and exact is True else 1


if __name__ == "__main__":
    sys.exit(main())
