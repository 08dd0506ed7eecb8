"""Check a ``ckpt_path`` before a run touches its directory.

It must exist, be readable, and be a Lightning checkpoint loadable with ``weights_only=True`` (plain tensors
and containers; no code in a checkpoint ever runs).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

# Lightning's ModelParallelStrategy (strategy=fsdp) writes a sharded checkpoint as a folder with this file
SHARDED_META = "meta.pt"
_RETRY = "Resume from an intact checkpoint, or set ckpt_path=null to start a new run."


def _others(path: Path) -> str:
    found = sorted(p.name for p in path.parent.glob("*.ckpt") if p != path) if path.parent.is_dir() else []
    return f" Other checkpoints in {path.parent}: {', '.join(found)}." if found else ""


def _unreadable(path: Path, problem: str) -> ValueError:
    return ValueError(f"ckpt_path={path} is not a readable checkpoint: {problem}. {_RETRY}{_others(path)}")


def _first_sentence(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.split('. ')[0].splitlines()[0] if text else 'no message'}"


def check_checkpoint(path: str | Path) -> int:
    """Load the checkpoint's trainer state and return its ``global_step``.

    The load uses ``mmap``, so tensors are not read into memory (cheap even for a multi-GB checkpoint).

    Args:
        path: A ``.ckpt`` file, or the folder of a sharded FSDP checkpoint.

    Raises:
        FileNotFoundError: If ``path`` does not exist, listing the checkpoints beside it.
        ValueError: If it cannot be read as a Lightning checkpoint with ``weights_only=True``.
    """
    path = Path(path).expanduser()
    if not path.exists():
        folder = path.parent
        found = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
        where = f"{folder} holds: {', '.join(found)}" if found else f"{folder} holds no .ckpt file"
        raise FileNotFoundError(f"ckpt_path={path} does not exist ({where}); fix ckpt_path or set it to null")
    file = path / SHARDED_META if path.is_dir() else path
    if not file.is_file():
        raise _unreadable(path, f"a folder without {SHARDED_META}, so not a sharded checkpoint")
    if file.stat().st_size == 0:
        raise _unreadable(path, "the file is empty (a full disk or a kill while it was written)")
    if not zipfile.is_zipfile(file):  # every torch.save file since torch 1.6 is a zip archive
        problem = (
            "not a complete torch.save archive (truncated by a full disk or a kill, or not a checkpoint)"
        )
        raise _unreadable(path, problem)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - any failure means the same thing to the user
        text = str(err)
        if "WeightsUnpickler error:" in text:  # objects other than tensors and plain containers
            detail = text.split("WeightsUnpickler error:", 1)[1].strip().split(". ")[0]
            raise ValueError(
                f"ckpt_path={path} holds objects that need code to load, and checkpoints are loaded with "
                f"weights_only=True ({detail}). Resume from a checkpoint written by train.py."
            ) from None
        raise _unreadable(path, _first_sentence(err)) from None
    if not isinstance(state, dict) or "global_step" not in state:
        raise _unreadable(path, "it holds no global_step, so it is not a Lightning training checkpoint")
    return int(state["global_step"])
