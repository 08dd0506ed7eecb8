"""The plan as one printed block: the peak phase's terms, every phase's total, the verdict and the fixes."""

from __future__ import annotations

from longact_pl.memory.plan import GIB, KV_GRADS, KV_HOLD, MemoryPlan


def gib(n: float) -> str:
    """Bytes as ``12.3 GiB``."""
    return f"{n / GIB:.2f} GiB"


def describe(plan: MemoryPlan) -> str:
    """One line of the settings the plan assumed."""
    s, m = plan.settings, plan.shape
    parts = [
        f"{m.name} (L={m.layers}, H={m.hidden}, heads {m.heads}/{m.kv_heads}, V={m.vocab})",
        f"{s.strategy} x{s.world}" + (" +cpu_offload" if s.cpu_offload else ""),
        s.precision,
        "checkpointing" if s.activation_checkpointing else "no checkpointing",
        f"micro-batch {s.prompt_tokens} prompt + {s.completion_tokens} completion tokens"
        + ("" if s.shared_prefix else " (per-row pass)"),
        f"logprob_chunk {s.logprob_chunk}",
    ]
    if s.sequence_parallel > 1:
        parts.append(f"sequence parallel {s.sequence_parallel}")
    return ", ".join(parts)


def format_plan(plan: MemoryPlan, limit: int | None = None, fixes: list[str] | None = None) -> str:
    """The plan as text: terms of the peak phase, phase totals, ``limit`` verdict and ``fixes``."""
    peak = plan.peak_phase
    where = "process (CPU)" if plan.settings.device == "cpu" else "device"
    lines = [f"memory plan per rank: {describe(plan)}", f"  {'term':30s} {'GiB':>9s}  what"]
    for t in plan.static + plan.phases[peak]:
        tag = " [host]" if t.host and plan.settings.device != "cpu" else ""
        lines.append(f"  {t.name:30s} {t.bytes / GIB:9.2f}  {t.note}{tag}")
    lines.append(f"  {'peak (' + peak + ')':30s} {plan.peak / GIB:9.2f}  predicted peak of the {where}")
    if plan.host and plan.settings.device != "cpu":
        lines.append(f"  {'host memory':30s} {plan.host / GIB:9.2f}  CPU memory per rank")
    totals = ", ".join(f"{name} {plan.phase_total(name) / GIB:.2f}" for name in plan.phases)
    lines.append(f"  phases (GiB): {totals}")
    hold = plan.term(KV_HOLD, "prompt backward") + plan.term(KV_GRADS, "prompt backward")
    if hold:
        lines.append(
            f"  prompt K/V + gradient hold: {gib(hold)} at the switch to the prompt's backward"
            + (" (the peak)" if peak == "prompt backward" else "")
        )
    if plan.interleaved:
        lines.append(
            "  shared prompt: layer by layer, one layer's prompt K/V and gradients at a time (no hold)"
        )
    if limit is not None:
        verdict = "fits" if plan.peak <= limit else "does NOT fit"
        lines.append(f"  limit {gib(limit)}: {verdict} ({gib(limit - plan.peak)} left)")
    for fix in fixes or []:
        lines.append(f"  - {fix}")
    if limit is not None:
        fitting = [f.removeprefix("would fit: ") for f in fixes or [] if f.startswith("would fit: ")]
        if plan.peak <= limit:
            lines.append("  recommended: as configured")
        elif fitting:
            lines.append(f"  recommended: {fitting[0]}")
    return "\n".join(lines)
