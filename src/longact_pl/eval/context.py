"""What a benchmark run gets from outside: model, engine, an append-only predictions file, a progress bar."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import torch
from tqdm.auto import tqdm

from longact_pl.rollout.types import RolloutEngine

log = logging.getLogger(__name__)
T = TypeVar("T")


class PredictionWriter:
    """Appends prediction rows to a JSONL file, flushing after every batch (a crash keeps what was done).

    Args:
        path: The ``predictions.jsonl`` file; it must not exist yet.

    Raises:
        FileExistsError: If ``path`` exists (an earlier evaluation would be overwritten).
    """

    def __init__(self, path: Path) -> None:
        if path.exists():
            raise FileExistsError(f"{path} already exists; choose another hydra.run.dir to keep it")
        self.path = path
        self.rows: list[dict] = []

    def write(self, rows: Sequence[dict]) -> None:
        """Append rows (kept in memory too, for the summary)."""
        with self.path.open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.rows.extend(rows)


@dataclass
class EvalContext:
    """The model under test and where results go.

    Attributes:
        engine: Rollout engine (``cfg.rollout``).
        policy: The causal LM, in eval mode on its device.
        tokenizer: Its tokenizer.
        writer: Sink of prediction rows.
        model_name: Shown in tables and plots.
        progress: Show a progress bar.
    """

    engine: RolloutEngine
    policy: torch.nn.Module
    tokenizer: object
    writer: PredictionWriter
    model_name: str = ""
    progress: bool = True

    def bar(self, total: int, desc: str) -> tqdm:
        """A progress bar over ``total`` prompts."""
        return tqdm(total=total, desc=desc, unit="prompt", disable=not self.progress, dynamic_ncols=True)

    def window(self) -> int | None:
        """The model's context window (``max_position_embeddings``), if it declares one."""
        config = getattr(self.policy, "config", None)
        return getattr(config, "max_position_embeddings", None)


class Benchmark(Protocol):
    """A benchmark run by ``evaluate.py``: generate, score, write rows, then summarise and report."""

    def run(self, ctx: EvalContext) -> dict:
        """Evaluate the model in ``ctx``; return the summary dict (written to ``summary.json``)."""
        ...

    def write_report(self, summary: dict, run_dir: Path) -> list[Path]:
        """Write ``summary.json``, ``summary.md`` and the PNG; return the paths."""
        ...


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def check_decoding(batch_size: int, where: str) -> None:
    """Validate the shared decoding settings of a benchmark config.

    Raises:
        ValueError: If ``batch_size < 1``.
    """
    if batch_size < 1:
        raise ValueError(f"{where}.batch_size must be >= 1, got {batch_size}")
