"""The memory table of ``docs/memory.md``, generated from the plan (``python -m longact_pl.memory.table``).

Two tables: the planned peaks of the default (layer-interleaved) shared-prompt pass, and the same peaks
before/after interleaving (issue 24, point 5). ``--write`` replaces each between its markers in
``docs/memory.md``; ``tests/memory/test_table.py`` checks the committed tables equal fresh ones.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from longact_pl.memory.plan import GIB, KV_GRADS, KV_HOLD, Settings, plan_memory
from longact_pl.memory.shapes import QWEN3_4B, QWEN3_8B, ModelShape

DOC = Path(__file__).resolve().parents[3] / "docs" / "memory.md"
START, END = "<!-- memory-table:start -->", "<!-- memory-table:end -->"
DROP_MARKERS = ("<!-- memory-interleave:start -->", "<!-- memory-interleave:end -->")
MODELS = {"Qwen3-4B": QWEN3_4B, "Qwen3-8B": QWEN3_8B}
PROMPTS = (8192, 16384, 32768, 65536)
GROUP, COMPLETION = 8, 1024
# column title -> (strategy, ranks, cpu offload)
LAYOUTS = {
    "1 GPU": ("single", 1, False),
    "1 GPU + offload": ("fsdp", 1, True),
    "FSDP x8": ("fsdp", 8, False),
    "FSDP x8 + offload": ("fsdp", 8, True),
}
SHORT = {
    "head backward": "head",
    "completion backward": "compl",
    "prompt backward": "switch",
    "layer backward": "layer",
    "optimizer step": "step",
}


def base_settings(prompt: int) -> Settings:
    """The table's run: one group per micro-batch, bf16-mixed, fp32 masters, checkpointing, no reference.

    Fused AdamW and the packed pass on FlexAttention: the CUDA defaults.
    """
    return Settings(
        prompt_tokens=prompt, completion_tokens=GROUP * COMPLETION, completion_rows=GROUP,
        precision="bf16-mixed", activation_checkpointing=True, logprob_chunk=1024, device="cuda",
        optimizer="fused", packed_kernel="flex",
    )  # fmt: skip


def _plans(shape: ModelShape, prompt: int, interleaved: bool):
    for strategy, ranks, offload in LAYOUTS.values():
        settings = replace(base_settings(prompt), strategy=strategy, world=ranks, cpu_offload=offload)
        yield plan_memory(shape, replace(settings, interleaved=interleaved))


def table() -> str:
    """Markdown: per model and prompt length, the planned peak GiB per GPU of each layout."""
    head = "| model | prompt | " + " | ".join(LAYOUTS) + " | two-pass K/V + grad hold (gone) |"
    lines = [head, "|" + "---|" * (len(LAYOUTS) + 3)]
    for name, config in MODELS.items():
        shape = ModelShape.from_config(config, name=name)
        for prompt in PROMPTS:
            cells = [f"{p.peak / GIB:.1f} ({SHORT[p.peak_phase]})" for p in _plans(shape, prompt, True)]
            two_pass = plan_memory(shape, replace(base_settings(prompt), interleaved=False))
            hold = two_pass.term(KV_HOLD, "prompt backward") + two_pass.term(KV_GRADS, "prompt backward")
            cells.append(f"{hold / GIB:.1f}")
            lines.append(f"| {name} | {prompt // 1024}k | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def drop_table() -> str:
    """Markdown: the planned peak GiB per GPU of each layout, two-pass -> interleaved (and the drop)."""
    head = "| model | prompt | " + " | ".join(LAYOUTS) + " |"
    lines = [head, "|" + "---|" * (len(LAYOUTS) + 2)]
    for name, config in MODELS.items():
        shape = ModelShape.from_config(config, name=name)
        for prompt in PROMPTS:
            cells = []
            for before, after in zip(_plans(shape, prompt, False), _plans(shape, prompt, True)):
                drop = (before.peak - after.peak) / GIB
                cells.append(f"{before.peak / GIB:.1f} -> {after.peak / GIB:.1f} (-{drop:.1f})")
            lines.append(f"| {name} | {prompt // 1024}k | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replace_table(text: str, new: str, markers: tuple[str, str] = (START, END)) -> str:
    """``text`` with the part between the ``markers`` replaced by ``new``.

    Raises:
        ValueError: If the markers are missing.
    """
    start, end = markers
    if start not in text or end not in text:
        raise ValueError(f"{start} / {end} markers not found")
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    return f"{before}{start}\n{new}\n{end}{after}"


def current(text: str) -> str:
    """``text`` with both tables regenerated."""
    return replace_table(replace_table(text, table()), drop_table(), DROP_MARKERS)


def main(argv: list[str] | None = None) -> int:
    """Print the table, or ``--write`` it into ``docs/memory.md``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help=f"replace the table in {DOC}")
    args = p.parse_args(argv)
    if args.write:
        DOC.write_text(current(DOC.read_text()))
    else:
        print(table() + "\n\n" + drop_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
