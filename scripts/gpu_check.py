"""GPU acceptance figures: one GRPO training step of a Qwen3-4B-shaped model at long context.

A random model built from Qwen3-4B's config (no weights needed for speed and memory) trains one GRPO step on
one prompt group (``--prompts`` tokens, ``--group`` completions of ``--completion`` tokens each) through the
trainer's own code: the learner's update (forward + backward + AdamW), the shared-prompt log-prob pass with
the completions packed in one row and a chunked LM head, LongAct saliency masks (q_proj/k_proj rows, ratio
0.3, calibrated on the prompt), fp32 master weights under bf16 autocast. Each length runs with the settings
the memory plan recommends for the device (``scripts/gpu_check_plan.py``, :func:`longact_pl.memory.advice.
recommended`): on an 80 GB H100, FSDP2 over one rank with CPU offload (parameters, gradients and AdamW in
pinned host memory, fused AdamW on the CPU), gradient checkpointing, LM-head chunks of 1024, the group in one
micro-batch. A warm-up step, then a timed one. Printed, one line each (``name value=...``):

* ``matmul_bf16_tflops``: an 8192^3 bf16 matrix product on this device (the achievable ceiling);
* ``start NAME planned_s=...`` before each length (the shell names the length a time limit stopped);
* ``grpo_step_<P>_seconds``, ``..._tokens_per_s`` (prompt once + completions, per second), ``..._mfu``
  (model FLOPs of forward + backward, no recomputation, over time x ``PEAK_BF16_FLOPS``),
  ``..._peak_mem_gib`` (``torch.cuda.max_memory_allocated`` during the timed step); ``value=oom`` when the
  step does not fit (a failed figure: the check exits non-zero);
* ``longact_masked_rows_exact``: whether every masked row of q_proj/k_proj is bit-identical to its initial
  value after the steps (LongAct's exactness on this device); ``unknown`` when no length ran;
* ``result NAME PASS|FAIL planned=... measured=... settings=... detail``: one summary row per figure (an
  OOM or any error is a FAIL): the plan's peak under the chosen settings beside the measured
  ``max_memory_allocated``, and their ratio (``plan_ratio=planned/measured``).

Exits non-zero when any figure failed or exactness is not ``true``.

``--dry`` runs the same code on the CPU with tiny shapes (memory and MFU are then not meaningful). Its plan
is the CUDA plan of the tiny shapes against a limit 10% under their plan as configured, so that, as on an
H100, the recommended settings differ from the configured ones and their code path runs (FSDP2 over one
gloo rank with CPU offload):

    python scripts/gpu_check.py                # on a GPU: P=8192, 16384 and 32768, G=8, C=1024
    python scripts/gpu_check.py --dry          # CPU, tiny Qwen3, P=64 and 128, G=2, C=16
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from transformers import Qwen3Config, Qwen3ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_check_plan, when loaded from a file
from gpu_check_plan import (  # noqa: E402
    DRY_COMPLETION,
    DRY_GROUP,
    DRY_PROMPTS,
    GPU_COMPLETION,
    GPU_GROUP,
    GPU_PROMPTS,
    QWEN3_4B,
    TINY,
    Assumptions,
    FigurePlan,
    base_settings,
    device_limit,
    figures,
    model_shape,
    step_flops,
)

from longact_pl.distributed import LocalOps  # noqa: E402
from longact_pl.guards import NonFiniteGuard  # noqa: E402
from longact_pl.learner import Learner, OptimizerCalls, TrainBatch  # noqa: E402
from longact_pl.masking.apply import RowFreezer  # noqa: E402
from longact_pl.masking.calibrate import collect_stats  # noqa: E402
from longact_pl.masking.selection import TopK, select_units  # noqa: E402
from longact_pl.masking.sharding import local_rows  # noqa: E402
from longact_pl.masking.targets import find_targets  # noqa: E402
from longact_pl.memory.plan import GIB, Settings, plan_memory  # noqa: E402
from longact_pl.ops.logprob_plan import LogprobPlan  # noqa: E402
from longact_pl.ops.policy_logprobs import LogprobPass  # noqa: E402
from longact_pl.precision import fsdp_mixed_precision  # noqa: E402
from longact_pl.rollout.types import RolloutBatch  # noqa: E402
from longact_pl.strategies import shard_model  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"
# Dense bf16 peak of an H100 / H200 SXM (NVIDIA datasheet: 989.4 TFLOP/s; 1979 is with 2:4 sparsity).
PEAK_BF16_FLOPS = 989.4e12


def line(name: str, value) -> None:
    """Print one ``name value=...`` figure."""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    print(f"{name} value={text}", flush=True)


def build_model(shape: dict, device: torch.device, checkpointing: bool, seed: int = 0) -> Qwen3ForCausalLM:
    """A random Qwen3 of ``shape`` (fp32 master weights) on ``device``, with gradient checkpointing or not."""
    config = Qwen3Config(**shape, layer_types=None)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with device:
        model = Qwen3ForCausalLM(config)
    if checkpointing:
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


def grpo_learner(rows: int, chunk: int | None) -> Learner:
    """The trainer's learner with ``algo=grpo`` (no KL term: no reference pass), ``rows`` per micro-batch."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["algo=grpo", "algo.kl_coef=0"])
    algorithm = instantiate(cfg.algo)
    # the packed path the trainer plans for Qwen3 with sdpa attention (the model every length loads)
    passes = LogprobPass(LogprobPlan("packed", "sdpa", chunk_size=chunk, reason="gpu_check: packed"))
    return Learner(algorithm, passes, NonFiniteGuard(), 1.0, micro_batch_size=rows)


def check_runnable(s: Settings) -> None:
    """Refuse settings this one-device check cannot run (it has one rank).

    Raises:
        ValueError: Naming the setting.
    """
    if s.world != 1 or s.sequence_parallel != 1 or s.strategy not in ("single", "fsdp") or s.reference:
        raise ValueError(
            f"gpu_check runs one rank without a reference model; the plan recommends strategy={s.strategy} "
            f"world={s.world} sequence_parallel={s.sequence_parallel} reference={s.reference}"
        )


def one_rank_mesh(device: torch.device):
    """A device mesh over this one process (FSDP2 over one rank), starting its process group if needed."""
    from torch.distributed.device_mesh import init_device_mesh

    if not dist.is_initialized():
        store = Path(tempfile.mkdtemp(prefix="gpu_check_pg_")) / "store"
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1)
    return init_device_mesh(device.type, (1,))


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


def one_length(args, shape: dict, device: torch.device, fig: FigurePlan) -> tuple[float, bool]:
    """Warm-up step, then a timed one, at one prompt length under the recommended settings.

    Returns:
        ``(seconds, masked rows exact)``.
    """
    s = fig.recommendation.settings
    check_runnable(s)
    offload = s.strategy == "fsdp" and s.cpu_offload
    model = build_model(shape, device, s.activation_checkpointing)
    ro = synthetic_rollouts(shape["vocab_size"], fig.prompt, fig.group, fig.completion, device)
    linears, masks = longact_masks(model, ro.input_ids[0, : fig.prompt])  # on the whole model, as calibration
    if s.strategy == "fsdp":  # FSDP2 over this one rank; offload: parameters to (pinned) host memory
        shard_model(
            model, one_rank_mesh(device), mp_policy=fsdp_mixed_precision(s.precision), cpu_offload=offload
        )
    before = {n: local_rows(lin.weight.detach())[0].clone() for n, lin in linears.items()}
    on_device = device.type == "cuda" and not offload
    # fused AdamW: CUDA's kernel, or with offload torch's fused CPU kernel (module.optimizer.fused=true)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=on_device or offload)
    freezer = RowFreezer()
    freezer.set_masks(linears, masks)
    freezer.attach([optimizer])
    batch = TrainBatch(ro, torch.linspace(-1.0, 1.0, fig.group, device=device))  # advantages [G]
    learner = grpo_learner(max(1, s.completion_rows), s.logprob_chunk)
    try:
        grpo_step(model, optimizer, freezer, learner, batch, device)  # warm-up (allocates AdamW states)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = grpo_step(model, optimizer, freezer, learner, batch, device)
    finally:
        freezer.detach()
    exact = True
    for n, lin in linears.items():  # masked rows bit-identical, trained rows moved
        now = local_rows(lin.weight.detach())[0]
        keep = masks[n].to(now.device)
        exact &= torch.equal(now[~keep], before[n][~keep])
        exact &= not torch.equal(now[keep], before[n][keep])
    return seconds, exact


def gib(x: float) -> str:
    """``14.2GiB``; below 0.1 GiB in MiB (the dry shapes): ``0.8MiB``."""
    return f"{x:.1f}GiB" if x >= 0.1 else f"{x * 1024:.1f}MiB"


def result(name: str, ok: bool, peak, detail: str = "", planned: float | None = None, settings: str = "-"):
    """One summary row: ``result NAME PASS|FAIL planned=... measured=... settings=... detail``."""
    measured = gib(peak) if isinstance(peak, float) else str(peak)
    plan = "-" if planned is None else gib(planned)
    if planned is not None and isinstance(peak, float) and peak > 0:
        detail = f"plan_ratio={planned / peak:.2f} {detail}"
    print(f"result {name} {'PASS' if ok else 'FAIL'} planned={plan} measured={measured} settings={settings} "
          f"{detail}".rstrip(), flush=True)  # fmt: skip


def settings_tag(s: Settings) -> str:
    """The chosen settings without spaces (one table cell): ``fsdp1+offload,ckpt,chunk1024,rows8``."""
    layout = "single" if s.strategy == "single" else f"{s.strategy}{s.world}"
    layout += "+offload" if s.strategy == "fsdp" and s.cpu_offload else ""
    ckpt = "ckpt" if s.activation_checkpointing else "no-ckpt"
    return f"{layout},{ckpt},chunk{s.logprob_chunk or 'all'},rows{s.completion_rows}"


def plan_figures(args, shape: dict) -> list[FigurePlan]:
    """Each length's recommended settings for the device (``--limit-gib``; dry: 10% under as configured)."""
    limit = None if args.limit_gib is None else int(args.limit_gib * GIB)
    if limit is None and not args.dry:
        limit = device_limit(torch.cuda.get_device_properties(0).total_memory)
    plans = []
    for prompt in args.prompts:
        own = limit
        if own is None:  # dry: just under the plan as configured, as the 4B figures are on an H100
            own = int(0.9 * plan_memory(model_shape(shape), base_settings(prompt, args.group, args.completion,
                                                                          "cuda")).peak)  # fmt: skip
        plans += figures([prompt], args.group, args.completion, own, "cuda", shape, Assumptions())
    return plans


def measure(args, shape: dict, device: torch.device) -> tuple[bool | None, bool]:
    """Every figure of the step at each prompt length, each with its recommended settings.

    Returns:
        ``(exact, all_ok)``: whether the masked rows stayed bit-identical in every length that ran (``None``
        when none ran), and whether every length ran (an OOM or any error is a failed figure).
    """
    exact: bool | None = None
    all_ok = True
    try:
        plans = plan_figures(args, shape)
    except ValueError as err:  # nothing fits the device on one rank
        result("figures", False, "-", f"plan: {err}".replace(" ", "_")[:200])
        return None, False
    for fig in plans:
        name, rec = fig.name, fig.recommendation
        planned, tag = rec.peak / GIB, settings_tag(rec.settings)
        print(f"start {name} planned_s={fig.planned_s:.0f} settings=[{rec.describe()}] "
              f"overrides=[{rec.overrides}]", flush=True)  # fmt: skip
        line(f"{name}_planned_peak_gib", planned)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            seconds, ok = one_length(args, shape, device, fig)
        except torch.OutOfMemoryError:
            line(f"{name}_peak_mem_gib", "oom")
            result(name, False, "oom", "out_of_memory", planned, tag)
            all_ok = False
            continue
        except Exception as err:  # noqa: BLE001 - a failed figure is reported as one, the others still run
            line(f"{name}_seconds", "error")
            detail = f"{type(err).__name__}: {err}".replace("\n", " ")[:200]
            result(name, False, "error", detail, planned, tag)
            all_ok = False
            continue
        finally:
            gc.collect()  # the model, its optimizer and host buffers of this length go before the next
            if device.type == "cuda":
                torch.cuda.empty_cache()
        exact = ok if exact is None else exact and ok
        flops = step_flops(shape, fig.prompt, [fig.completion] * fig.group)
        line(f"{name}_seconds", seconds)
        line(f"{name}_tokens_per_s", (fig.prompt + fig.group * fig.completion) / seconds)
        line(f"{name}_mfu", flops / seconds / PEAK_BF16_FLOPS)
        peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else "n/a(cpu)"
        line(f"{name}_peak_mem_gib", peak)
        detail = f"step {seconds:.2f}s, figure planned {fig.planned_s:.0f}s"
        detail += "" if ok else ", masked rows not exact"
        result(name, ok, peak, detail, planned, tag)
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
    p.add_argument("--limit-gib", type=float, default=None, help="memory the plan must fit (default: device)")
    args = p.parse_args(argv)
    if not args.dry and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry for the CPU check of the code path")
    device = torch.device("cpu" if args.dry else "cuda")
    shape = TINY if args.dry else QWEN3_4B
    default = DRY_PROMPTS if args.dry else GPU_PROMPTS
    args.prompts = [int(x) for x in args.prompts.split(",")] if args.prompts else list(default)
    args.group = args.group or (DRY_GROUP if args.dry else GPU_GROUP)
    args.completion = args.completion or (DRY_COMPLETION if args.dry else GPU_COMPLETION)
    print(f"# model={'tiny Qwen3' if args.dry else 'Qwen3-4B shapes'} random, fp32 weights, bf16 autocast, "
          f"the memory plan's recommended settings per length; G={args.group} C={args.completion}; MFU "
          f"against {PEAK_BF16_FLOPS:.4g} FLOP/s (H100/H200 SXM dense bf16)", flush=True)  # fmt: skip
    line("matmul_bf16_tflops", matmul_tflops(device, 256 if args.dry else 8192))
    try:
        exact, all_ok = measure(args, shape, device)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    line("longact_masked_rows_exact", "unknown" if exact is None else str(exact).lower())
    result("longact_masked_rows_exact", exact is True, "-", "nothing_ran" if exact is None else "")
    return 0 if all_ok and exact is True else 1


if __name__ == "__main__":
    sys.exit(main())
