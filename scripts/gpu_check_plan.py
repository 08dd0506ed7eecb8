"""The plan of the GPU acceptance run (no torch): each figure's settings and memory, each section's time.

* **Settings.** Each figure (one GRPO step of a random Qwen3-4B-shaped model, one prompt of P tokens and
  G = 8 completions of 1,024 tokens) runs with the settings :func:`longact_pl.memory.advice.recommended`
  gives for the device's memory: as configured (one GPU, bf16-mixed, checkpointing, LM-head chunks of 1024,
  fused AdamW, LongAct freezing 70% of the q/k rows) when that fits, else the cheapest change that fits on
  one GPU. On an 80 GB H100 that is FSDP2 over one rank with CPU offload at 8k, 16k and 32k (as configured
  the plan puts them at 78.2 / 83.4 / 93.8 GiB).
* **Time.** Each section's time is estimated from first principles under :class:`Assumptions` (printed) and
  given a limit (:func:`limits`): the shell kills a section at its limit and reports it as a FAIL under its
  own name, and no section starts past the run's budget (9 minutes), so one slow section cannot make the
  whole call time out.

    python scripts/gpu_check_plan.py                    # the H100 plan: settings, memory, seconds
    python scripts/gpu_check_plan.py --device-gib 139.8 --wheelhouse-mb 5600
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout, not installed

from longact_pl.memory.advice import Recommendation, recommended  # noqa: E402
from longact_pl.memory.plan import GIB, Settings, plan_memory  # noqa: E402
from longact_pl.memory.shapes import ModelShape  # noqa: E402

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
GPU_PROMPTS, GPU_GROUP, GPU_COMPLETION = (8192, 16384, 32768), 8, 1024
DRY_PROMPTS, DRY_GROUP, DRY_COMPLETION = (64, 128), 2, 16
H100_GIB = 81559 / 1024  # torch.cuda.get_device_properties(0).total_memory of an H100 SXM 80 GB
BUDGET_S = 540  # the 9 minutes for the whole script
SECTIONS = ("env", "wheelhouse", "figures", "async", "gpu-tests", "vllm")


@dataclass(frozen=True)
class Assumptions:
    """What the time estimate assumes of one H100 SXM machine (16 CPU cores); none of it measured.

    Attributes:
        gpu_flops: Effective bf16 FLOP/s of the training step: 989 TFLOP/s dense peak x ~40% MFU.
        link_bytes_per_s: Pinned host <-> device copies (PCIe Gen5 x16 peaks near 55 GB/s; 20 is sustained
            with FSDP's per-layer copies not overlapped).
        cpu_bytes_per_s: Memory bandwidth the CPU AdamW step streams at on 16 cores.
        adamw_bytes: Bytes moved per parameter by fused AdamW (reads p, g, m, v; writes p, m, v; float32).
        first_touch_bytes_per_s: New host memory (AdamW moments, pinned buffers) paged in.
        gpu_bytes_per_s: HBM3 bandwidth, for an optimizer step on the device.
        start_s: A Python process with torch/transformers/hydra imported and a CUDA context.
        build_s: Building and random-initialising the 4B model on the GPU.
        steps: Steps per figure: one warm-up (allocates AdamW's moments) and one measured.
    """

    gpu_flops: float = 400e12
    link_bytes_per_s: float = 20e9
    cpu_bytes_per_s: float = 30e9
    adamw_bytes: int = 28
    first_touch_bytes_per_s: float = 10e9
    gpu_bytes_per_s: float = 2e12
    start_s: float = 15.0
    build_s: float = 5.0
    steps: int = 2

    def lines(self) -> list[str]:
        """``# assume ...`` lines for the log."""
        return [
            f"# assume GPU {self.gpu_flops / 1e12:.0f} TFLOP/s effective bf16 (989 dense peak x ~40% MFU), "
            f"host<->device {self.link_bytes_per_s / 1e9:.0f} GB/s, CPU AdamW streaming "
            f"{self.cpu_bytes_per_s / 1e9:.0f} GB/s on 16 cores ({self.adamw_bytes} B/param, fused), new "
            f"host memory paged in at {self.first_touch_bytes_per_s / 1e9:.0f} GB/s, process start "
            f"{self.start_s:.0f} s, model build {self.build_s:.0f} s, {self.steps} steps per figure "
            "(warm-up + measured)",
        ]


@dataclass(frozen=True)
class FigurePlan:
    """One figure: its name and sizes, the recommended settings with their planned peak, and its time.

    Attributes:
        name: ``grpo_step_8k`` (``grpo_step_64`` for the dry shapes).
        prompt: Prompt tokens P.
        group: Completions G.
        completion: Tokens per completion C.
        recommendation: Settings to run with and their planned peak.
        seconds: Planned seconds per part (``build``, ``shard``, ``compute``, ``transfers``, ``optimizer``).
    """

    name: str
    prompt: int
    group: int
    completion: int
    recommendation: Recommendation
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def planned_s(self) -> float:
        """Planned seconds in all."""
        return sum(self.seconds.values())


def figure_name(prompt: int) -> str:
    """``grpo_step_8k`` for 8192, ``grpo_step_64`` below 1024."""
    return f"grpo_step_{prompt // 1024}k" if prompt >= 1024 else f"grpo_step_{prompt}"


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


def base_settings(prompt: int, group: int, completion: int, device: str) -> Settings:
    """The figure as configured: one group, packed, bf16-mixed, checkpointing, chunks of 1024, LongAct 0.3."""
    return Settings(
        prompt_tokens=prompt, completion_tokens=group * completion, completion_rows=group,
        precision="bf16-mixed", activation_checkpointing=True, logprob_chunk=1024,
        optimizer="fused", device=device, frozen_fraction=0.7,
        packed_kernel="flex" if device == "cuda" else "sdpa_mask",
    )  # fmt: skip


def model_shape(shape: dict) -> ModelShape:
    """The plan's shape of a Qwen3 config dict."""
    return ModelShape.from_config({**shape, "model_type": "qwen3"})


def figure_seconds(shape: dict, rec: Recommendation, group: int, a: Assumptions) -> dict[str, float]:
    """Planned seconds of one figure of ``group`` completions under ``rec``'s settings (:class:`Assumptions`).

    A micro-batch of fewer completions than the group reruns the prompt (and the transfers) per micro-batch.
    """
    s, params = rec.settings, model_shape(shape).params
    rows = max(1, s.completion_rows)
    completions = [s.completion_tokens // rows] * rows
    micro = -(-group // rows)  # micro-batches per step
    flops = (
        micro * step_flops(shape, s.prompt_tokens, completions) * (4 / 3 if s.activation_checkpointing else 1)
    )
    prompt_fwd = step_flops(shape, s.prompt_tokens, []) / 3  # LongAct's calibration forward
    parts = {"build": a.build_s, "calibrate": prompt_fwd / a.gpu_flops + 1.0}
    offload = s.strategy == "fsdp" and s.cpu_offload
    state = 4 * params  # float32 parameters (and as much for gradients)
    if offload:  # parameters to pinned host memory, every step: 2 gathers (forward, backward) + gradients
        parts["shard"] = state / a.first_touch_bytes_per_s + state / a.link_bytes_per_s
        parts["transfers"] = a.steps * 3 * state / a.link_bytes_per_s * micro
        parts["transfers"] += state / a.first_touch_bytes_per_s  # the first step's pinned gradient buffers
        parts["optimizer"] = a.steps * params * a.adamw_bytes / a.cpu_bytes_per_s
        parts["optimizer"] += 2 * state / a.first_touch_bytes_per_s  # AdamW's two moments, first step
    else:
        parts["optimizer"] = a.steps * params * a.adamw_bytes / a.gpu_bytes_per_s
    parts["compute"] = a.steps * flops / a.gpu_flops
    return parts


def figures(
    prompts, group: int, completion: int, limit: int, device: str, shape: dict, a: Assumptions
) -> list[FigurePlan]:
    """Each figure's recommended settings (for ``limit`` bytes of device memory) and planned seconds.

    Raises:
        ValueError: When nothing fits ``limit`` on one GPU (naming the closest settings).
    """
    out = []
    for prompt in prompts:
        base = base_settings(prompt, group, completion, device)
        rec = recommended(model_shape(shape), base, limit, prompt, completion)
        out.append(
            FigurePlan(
                figure_name(prompt), prompt, group, completion, rec, figure_seconds(shape, rec, group, a)
            )
        )
    return out


def device_limit(total_bytes: float) -> int:
    """Bytes the plan may use on a device of ``total_bytes``: 10% left to the allocator's fragmentation,
    1 GiB to the CUDA context (neither is in the plan)."""
    return int(0.9 * total_bytes - GIB)


def section_seconds(figs: list[FigurePlan], wheelhouse_mb: float, a: Assumptions) -> dict[str, float]:
    """Planned seconds of each section of ``scripts/gpu_check.sh`` on one H100.

    ``env``: two interpreter starts (versions of torch and vLLM; the plan). ``wheelhouse``: ``pip install
    --no-index --no-compile`` unpacking ``wheelhouse_mb`` at 40 MB/s plus 15 s of resolving (0 when no
    wheelhouse is given). ``figures``: a process start and the figures. ``async``: a random 4-layer model,
    6 steps per arm, sync then async. ``gpu-tests``: collecting the suite (~30 s) and the gpu-marked tests
    (two tiny training runs, the packed and kernel checks). ``vllm``: an eager engine (no CUDA graphs) on a
    tiny model: start ~35 s, three pushes and rollouts, a sleep/wake cycle, shutdown.
    """
    return {
        "env": 20.0,
        "wheelhouse": 15.0 + wheelhouse_mb / 40.0 if wheelhouse_mb else 0.0,
        "figures": a.start_s + 1.0 + sum(f.planned_s for f in figs),
        "async": a.start_s + 15.0,
        "gpu-tests": 90.0,
        "vllm": 60.0,
    }


def limits(planned: dict[str, float], dry: bool = False) -> dict[str, int]:
    """Each section's time limit: 1.5 x its plan plus 30 s (the dry run on a loaded CPU: fixed ones)."""
    if dry:
        return {"env": 60, "wheelhouse": 300, "figures": 240, "async": 120, "gpu-tests": 60, "vllm": 240}
    return {name: int(1.5 * s + 30) for name, s in planned.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry", action="store_true", help="also print the dry run's (CPU) limits")
    p.add_argument("--device-gib", type=float, default=H100_GIB, help="device memory (default: H100 80 GB)")
    p.add_argument("--wheelhouse-mb", type=float, default=0.0, help="size of the wheels to install")
    args = p.parse_args(argv)
    a = Assumptions()
    limit = device_limit(args.device_gib * GIB)
    for text in a.lines():
        print(text)
    print(f"# figures on {args.device_gib:.1f} GiB: plan limit {limit / GIB:.1f} GiB (90% - 1 GiB context)")
    figs = figures(GPU_PROMPTS, GPU_GROUP, GPU_COMPLETION, limit, "cuda", QWEN3_4B, a)
    for f in figs:
        parts = " ".join(f"{k}={v:.1f}" for k, v in f.seconds.items())
        host = plan_memory(model_shape(QWEN3_4B), f.recommendation.settings).host
        print(f"plan {f.name} planned_s={f.planned_s:.0f} planned_gib={f.recommendation.peak / GIB:.1f} "
              f"host_gib={host / GIB:.1f} settings=[{f.recommendation.describe()}] ({parts})")  # fmt: skip
    planned = section_seconds(figs, args.wheelhouse_mb, a)
    chosen = limits(planned, dry=args.dry)
    for name in SECTIONS:
        print(f"section {name} planned_s={planned[name]:.0f} limit_s={chosen[name]}")
    print(f"# planned in all {sum(planned.values()):.0f} s of the {BUDGET_S} s budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
