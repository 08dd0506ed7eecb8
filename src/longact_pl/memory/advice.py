"""Settings that would make a plan fit a memory limit, each with its own planned peak (pure)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from longact_pl.memory.plan import GIB, Settings, plan_memory
from longact_pl.memory.shapes import ModelShape


@dataclass(frozen=True)
class Option:
    """One change: the overrides to pass, its settings, and the planned peak under it."""

    overrides: str
    settings: Settings
    peak: int

    def line(self, limit: int) -> str:
        """``overrides -> 31.2 GiB (fits)``."""
        verdict = "fits" if self.peak <= limit else "does not fit"
        return f"{self.overrides} -> {self.peak / GIB:.2f} GiB ({verdict})"


def _option(shape: ModelShape, overrides: str, settings: Settings) -> Option:
    return Option(overrides, settings, plan_memory(shape, settings).peak)


def _fewer_completions(
    shape: ModelShape, s: Settings, prompt: int, completion: int, limit: int
) -> Option | None:
    """The largest token budget (one prompt, fewer completions) that fits, else the smallest one.

    ``None`` when the micro-batch already holds one prompt and one completion.
    """
    if not s.shared_prefix or completion < 1:
        return None
    rows = max(1, s.completion_tokens // completion)
    option = None
    for r in range(rows - 1, 0, -1):
        trial = replace(s, prompt_tokens=prompt, completion_tokens=r * completion, completion_rows=r)
        option = _option(shape, f"module.learner.micro_batch_tokens={prompt + r * completion}", trial)
        if option.peak <= limit:
            return option
    return option  # the smallest micro-batch (does not fit either)


def _heads_divisible(shape: ModelShape, size: int) -> bool:
    return shape.heads % size == 0 and shape.kv_heads % size == 0


def options(
    shape: ModelShape,
    s: Settings,
    limit: int,
    prompt: int,
    completion: int,
    max_ranks: int = 64,
    with_closest: bool = True,
) -> list[Option]:
    """Changes that bring the peak under ``limit``, cheapest first; combinations when no single one does.

    Args:
        shape: The model.
        s: The run's settings.
        limit: Bytes per rank.
        prompt: Longest prompt (one group's prompt tokens).
        completion: Longest completion.
        max_ranks: The most ranks suggested.
        with_closest: When nothing fits, return the stacked changes that come closest instead of nothing.
    """
    singles: list[Option] = []
    if not s.activation_checkpointing:
        singles.append(
            _option(shape, "model.gradient_checkpointing=true", replace(s, activation_checkpointing=True))
        )
    fewer = _fewer_completions(shape, s, prompt, completion, limit)
    if fewer is not None:
        singles.append(fewer)
    fsdp = replace(s, strategy="fsdp")
    if s.strategy != "fsdp" and s.world > 1:
        singles.append(_option(shape, "strategy=fsdp", fsdp))
    for size in (2, 4, 8):
        if size > s.sequence_parallel and s.world % size == 0 and _heads_divisible(shape, size):
            singles.append(_option(
                shape, f"strategy=fsdp trainer.strategy.sequence_parallel_size={size}",
                replace(fsdp, sequence_parallel=size),
            ))  # fmt: skip
    if s.device == "cuda":
        if not s.cpu_offload:
            singles.append(_option(
                shape, "strategy=fsdp trainer.strategy.cpu_offload=true", replace(fsdp, cpu_offload=True)
            ))  # fmt: skip
        ranks = s.world * 2
        while ranks <= max_ranks:
            text = f"strategy=fsdp with {ranks} ranks (trainer.devices x trainer.num_nodes)"
            singles.append(_option(shape, text, replace(fsdp, world=ranks)))
            if singles[-1].peak <= limit:  # the fewest ranks that fit
                break
            ranks *= 2
    fitting = [o for o in singles if o.peak <= limit]
    if fitting or not with_closest:
        return fitting
    # no single change fits: stack them, cheapest first, until one does
    stacked, text = s, []
    steps = [("model.gradient_checkpointing=true", dict(activation_checkpointing=True))]
    if s.device == "cuda":
        steps.append(
            ("strategy=fsdp trainer.strategy.cpu_offload=true", dict(strategy="fsdp", cpu_offload=True))
        )
    out = []
    for overrides, change in steps:
        stacked = replace(stacked, **change)
        text.append(overrides)
        option = _option(shape, " ".join(text), stacked)
        fewer = _fewer_completions(shape, stacked, prompt, completion, limit)
        if option.peak <= limit:
            return out + [option]
        if fewer is not None and fewer.peak <= limit:
            return out + [Option(" ".join(text) + " " + fewer.overrides, fewer.settings, fewer.peak)]
        out.append(
            option
            if fewer is None
            else Option(" ".join(text) + " " + fewer.overrides, fewer.settings, fewer.peak)
        )
    return sorted({o.overrides: o for o in singles + out}.values(), key=lambda o: o.peak)[:4]


def fixes(shape: ModelShape, s: Settings, limit: int, prompt: int, completion: int) -> list[str]:
    """Lines naming what would make the run fit (or saying nothing found does)."""
    found = options(shape, s, limit, prompt, completion)
    if any(o.peak <= limit for o in found):
        return ["would fit: " + o.line(limit) for o in found]
    return [
        "nothing found that fits; closest: " + ", ".join(o.line(limit) for o in found),
        "lower data.max_prompt_tokens / rollout.max_new_tokens / module.learner.micro_batch_tokens, or add "
        "ranks (strategy=fsdp), trainer.strategy.sequence_parallel_size and "
        "trainer.strategy.cpu_offload=true",
    ]


@dataclass(frozen=True)
class Recommendation:
    """The settings to run with on the ranks there are, their planned peak, and what changed.

    Attributes:
        settings: The run's settings, or the cheapest change of them that fits.
        peak: Planned peak bytes per rank under ``settings``.
        phase: The phase that sets the peak.
        overrides: The config overrides that give ``settings`` (empty when the run fits as it is).
    """

    settings: Settings
    peak: int
    phase: str
    overrides: str = ""

    def describe(self) -> str:
        """The settings in one line: ``fsdp x1 + cpu_offload, checkpointing, chunk 1024, micro-batch ...``."""
        s = self.settings
        layout = s.strategy if s.strategy == "single" else f"{s.strategy} x{s.world}"
        parts = [layout + (" + cpu_offload" if s.strategy == "fsdp" and s.cpu_offload else "")]
        if s.sequence_parallel > 1:
            parts.append(f"sequence_parallel {s.sequence_parallel}")
        parts.append("checkpointing" if s.activation_checkpointing else "no checkpointing")
        parts.append(f"chunk {s.logprob_chunk}" if s.logprob_chunk else "no LM-head chunks")
        tokens = s.prompt_tokens + s.completion_tokens
        parts.append(f"micro-batch {tokens} tokens ({s.completion_rows} completions)")
        return ", ".join(parts)


def recommended(shape: ModelShape, s: Settings, limit: int, prompt: int, completion: int) -> Recommendation:
    """The settings the plan recommends on ``s.world`` ranks: ``s`` if it fits, else the cheapest fix.

    Only changes that keep the number of ranks are taken (gradient checkpointing, fewer completions per
    micro-batch, FSDP over the same ranks with or without CPU offload, sequence parallelism over them),
    in :func:`options`' order, stacked when no single one fits.

    Args:
        shape: The model.
        s: The run's settings.
        limit: Bytes per rank.
        prompt: Longest prompt (one group's prompt tokens).
        completion: Longest completion.

    Raises:
        ValueError: When nothing fits on these ranks, naming the closest settings and their peak.
    """
    plan = plan_memory(shape, s)
    if plan.peak <= limit:
        return Recommendation(s, plan.peak, plan.peak_phase)
    found = options(shape, s, limit, prompt, completion, max_ranks=s.world)  # never more ranks
    for option in found:
        if option.peak <= limit:
            chosen = plan_memory(shape, option.settings)
            return Recommendation(option.settings, option.peak, chosen.peak_phase, option.overrides)
    closest = ", ".join(o.line(limit) for o in found) or "none"
    raise ValueError(
        f"nothing fits {limit / GIB:.1f} GiB per rank on {s.world} rank(s) (planned "
        f"{plan.peak / GIB:.1f} GiB as configured); closest: {closest}"
    )
