"""The judge's raw verdicts on disk: ``<run>/judge_verdicts/rank<r>.jsonl``, one JSON row per judgement.

Rows are appended and flushed as soon as a batch is judged (failures included), so a run that stops keeps
every verdict it had; each row names the step and phase (``train`` / ``val`` / ``eval``) it belongs to.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from longact_pl.rewards.judge.types import Judgement


def process_rank() -> int:
    """The process's global rank (``torch.distributed`` when initialised, else ``$RANK``, else 0)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


class VerdictRecords:
    """Appends judgements to ``directory/rank<r>.jsonl`` (``directory=None``: keeps nothing).

    Args:
        directory: The folder (created on the first write).
    """

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = Path(directory) if directory else None

    @property
    def path(self) -> Path | None:
        """The file of this rank (``None`` when nothing is kept)."""
        return None if self.directory is None else self.directory / f"rank{process_rank()}.jsonl"

    def write(self, judgements: Sequence[Judgement], step: int, phase: str) -> None:
        """Append one row per judgement, tagged with ``step`` and ``phase``."""
        path = self.path
        if path is None or not judgements:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            for j in judgements:
                f.write(json.dumps(j.row(step=step, phase=phase), ensure_ascii=False) + "\n")
            f.flush()
