"""Per-prompt held-out results of training-time validation: ``<run>/val_predictions/step_<k>.jsonl``.

One JSON line per held-out prompt and validation pass, so two runs can be compared prompt by prompt (a
paired analysis, ``scripts/report.py --paired``). A prompt's ``id`` is ``<task>/<target_length>/<index>``
with ``index`` its position in the validation source: runs whose validation source has the same seed,
task and lengths hold the same prompts under the same ids; ``prompt_sha`` (a digest of the templated
token ids) lets a reader check that, not assume it.

Each rank scores its share of the validation set; :meth:`ValRecords.write` gathers the rows on every rank
(a collective) and rank 0 writes the file, sorted by ``index``, once per validation pass.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

# Keys of every row, in file order.
ROW_KEYS = (
    "id", "index", "task", "target_length", "prompt_tokens", "prompt_sha", "step", "score", "completion",
    "references",
)  # fmt: skip


def prompt_id(record: dict[str, Any]) -> str:
    """``<task>/<target_length>/<index>`` of a prompt record (stable across runs with the same data)."""
    return f"{record['task']}/{int(record['target_length'])}/{int(record['index'])}"


def prompt_sha(prompt_ids: Sequence[int]) -> str:
    """First 16 hex digits of the SHA-256 of a prompt's token ids (equal prompts, equal digests)."""
    return hashlib.sha256(json.dumps([int(t) for t in prompt_ids]).encode()).hexdigest()[:16]


def step_file(directory: Path, step: int) -> Path:
    """``directory/step_<step>.jsonl``."""
    return directory / f"step_{step}.jsonl"


def step_of(path: Path) -> int:
    """The step of a ``step_<k>.jsonl`` file.

    Raises:
        ValueError: If the name is not ``step_<int>.jsonl``.
    """
    stem = path.name.removesuffix(".jsonl")
    if not stem.startswith("step_") or not stem[5:].isdigit():
        raise ValueError(f"{path}: not a step_<k>.jsonl file of val_predictions/")
    return int(stem[5:])


class ValRecords:
    """Collects one validation pass's per-prompt rows and writes them once the pass ends.

    Args:
        directory: Where ``step_<k>.jsonl`` files go (``None``: rows are neither kept nor written).
    """

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = Path(directory) if directory else None
        self.rows: list[dict[str, Any]] = []

    def add(
        self, step: int, records: Sequence[dict], completions: Sequence[str], scores: torch.Tensor
    ) -> None:
        """Keep a row per record that is not padding.

        Args:
            step: Optimizer steps done (0 before training).
            records: The batch's prompt records (``prompt_ids``, ``task``, ``target_length``, ``index``, ...).
            completions: One greedy completion per record.
            scores: ``[B]`` scores, one per record.

        Raises:
            ValueError: If the three do not have one entry per record.
        """
        if self.directory is None:
            return
        values = torch.as_tensor(scores).detach().flatten().tolist()  # [B]
        if not len(records) == len(completions) == len(values):
            raise ValueError(
                f"ValRecords.add: {len(records)} records, {len(completions)} completions and {len(values)} "
                "scores; give one completion and one score per record"
            )
        for rec, text, value in zip(records, completions, values):
            if rec.get("padding", False):
                continue
            row = {
                "id": prompt_id(rec),
                "index": int(rec["index"]),
                "task": rec["task"],
                "target_length": int(rec["target_length"]),
                "prompt_tokens": len(rec["prompt_ids"]),
                "prompt_sha": prompt_sha(rec["prompt_ids"]),
                "step": int(step),
                "score": float(value),
                "completion": text,
                "references": list(rec["references"]),
            }
            self.rows.append(row)

    def write(self, step: int, gather: Callable[[list], list[list]], is_main: bool) -> Path | None:
        """Gather every rank's rows; rank 0 writes ``step_<step>.jsonl`` (sorted by index); reset.

        Every rank must call this (``gather`` is a collective). The file is written to a temporary name and
        renamed, so a reader never sees half a pass.

        Args:
            step: Optimizer steps done (names the file).
            gather: ``rows -> [rows of rank 0, rows of rank 1, ...]``.
            is_main: True on the rank that writes.

        Returns:
            The written file on the main rank, else ``None``.
        """
        if self.directory is None:
            return None
        parts = gather(self.rows)
        self.rows = []
        if not is_main:
            return None
        # the ranks of a sequence-parallel group score the same prompts: one row per prompt (the first rank's)
        unique = {}
        for part in parts:
            for row in part:
                unique.setdefault(row["index"], row)
        rows = sorted(unique.values(), key=lambda r: r["index"])
        self.directory.mkdir(parents=True, exist_ok=True)
        path = step_file(self.directory, step)
        tmp = path.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
        return path


def read_scored_rows(path: Path, what: str = "a val_predictions row") -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file of per-prompt results (each with ``id`` and ``score``).

    Args:
        path: The file.
        what: How the error names a row.

    Raises:
        ValueError: On a line that is not a JSON object with ``id`` and ``score``, naming file and line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: not a text JSONL file (byte {err.start} is not UTF-8): the file is corrupt (expected "
            f"{what} per line); rerun what wrote it or leave it out"
        ) from None
    rows = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict) or "id" not in row or "score" not in row:
            raise ValueError(f"{path}:{lineno}: {what} needs 'id' and 'score'")
        rows.append(row)
    return rows


def read_step(path: Path) -> list[dict[str, Any]]:
    """Rows of one ``step_<k>.jsonl`` file (see :func:`read_scored_rows`)."""
    return read_scored_rows(path)
