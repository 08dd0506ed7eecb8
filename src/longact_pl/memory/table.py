"""The memory table of ``docs/memory.md``, generated from the plan (``python -m longact_pl.memory.table``).

``--write`` replaces the table between the markers of ``docs/memory.md``; ``tests/memory/test_table.py``
checks the committed table equals a fresh one.
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
    "optimizer step": "step",
}


def base_settings(prompt: int) -> Settings:
    """The table's run: one group per micro-batch, bf16-mixed, fp32 masters, checkpointing, no reference."""
    return Settings(
        prompt_tokens=prompt, completion_tokens=GROUP * COMPLETION, completion_rows=GROUP,
        precision="bf16-mixed", activation_checkpointing=True, logprob_chunk=1024, device="cuda",
    )  # fmt: skip


def table() -> str:
    """Markdown: per model and prompt length, the planned peak GiB per GPU of each layout."""
    head = "| model | prompt | " + " | ".join(LAYOUTS) + " | K/V + grad hold | FSDP x8 without the hold |"
    lines = [head, "|" + "---|" * (len(LAYOUTS) + 4)]
    for name, config in MODELS.items():
        shape = ModelShape.from_config(config, name=name)
        for prompt in PROMPTS:
            cells = []
            for strategy, ranks, offload in LAYOUTS.values():
                s = replace(base_settings(prompt), strategy=strategy, world=ranks, cpu_offload=offload)
                plan = plan_memory(shape, s)
                cells.append(f"{plan.peak / GIB:.1f} ({SHORT[plan.peak_phase]})")
            plan = plan_memory(shape, replace(base_settings(prompt), strategy="fsdp", world=8))
            hold = plan.term(KV_HOLD, "prompt backward") + plan.term(KV_GRADS, "prompt backward")
            cells += [f"{hold / GIB:.1f}", f"{plan.peak_without_hold / GIB:.1f}"]
            lines.append(f"| {name} | {prompt // 1024}k | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replace_table(text: str, new: str) -> str:
    """``text`` with the part between the markers replaced by ``new``.

    Raises:
        ValueError: If the markers are missing.
    """
    if START not in text or END not in text:
        raise ValueError(f"{START} / {END} markers not found")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    return f"{before}{START}\n{new}\n{END}{after}"


def main(argv: list[str] | None = None) -> int:
    """Print the table, or ``--write`` it into ``docs/memory.md``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help=f"replace the table in {DOC}")
    args = p.parse_args(argv)
    if args.write:
        DOC.write_text(replace_table(DOC.read_text(), table()))
    else:
        print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
