"""Writing masks to disk: ``mask.safetensors`` (one bool row vector per module) + ``mask_summary.json``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

MASK_FILE = "mask.safetensors"
SUMMARY_FILE = "mask_summary.json"


def write_masks(folder: str | Path, masks: Mapping[str, Tensor], summary: Mapping[str, Any]) -> Path:
    """Write ``mask.safetensors`` and ``mask_summary.json`` into ``folder`` (created if needed).

    Args:
        folder: Output directory.
        masks: Qualified module name -> bool row mask (True = row was trained).  # [rows] each
        summary: JSON-serialisable description (ratio, statistic, kept rows, drift history...).

    Returns:
        The folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {name: m.detach().cpu().bool().contiguous() for name, m in masks.items()}, str(folder / MASK_FILE)
    )
    (folder / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
    return folder


def read_masks(folder: str | Path) -> dict[str, Tensor]:
    """Load the masks written by :func:`write_masks`."""
    return load_file(str(Path(folder) / MASK_FILE))


def read_summary(folder: str | Path) -> dict[str, Any]:
    """Load the summary written by :func:`write_masks`."""
    return json.loads((Path(folder) / SUMMARY_FILE).read_text())
