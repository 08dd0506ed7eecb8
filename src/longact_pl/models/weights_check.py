"""Check ``*.safetensors`` files of a local model folder before ``from_pretrained`` reads them.

A file cut short (a full disk, a copy killed half-way) or overwritten with other bytes makes safetensors
say ``header too large`` or ``incomplete metadata`` without the file's name. :func:`check_safetensors`
reads only each file's header (8-byte length, JSON table of tensors) and its size, and names the file.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

# safetensors refuses headers above 100 MB
_MAX_HEADER = 100_000_000


def _problem(path: Path) -> str | None:
    """What is wrong with one safetensors file (``None``: its header is whole and its data fits the file)."""
    size = path.stat().st_size
    if size < 8:
        return f"{size} bytes, shorter than the 8-byte header length"
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > _MAX_HEADER or 8 + length > size:
            return f"its header claims {length} bytes but the file has {size}"
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "its header is not the JSON table of tensors"
    if not isinstance(header, dict):
        return "its header is not the JSON table of tensors"
    ends = [
        int(t["data_offsets"][1])
        for k, t in header.items()
        if k != "__metadata__" and isinstance(t, dict) and len(t.get("data_offsets", ())) == 2
    ]
    if len(ends) != len(header) - ("__metadata__" in header):
        return "its header lists tensors without data offsets"
    data = size - 8 - length
    if ends and max(ends) > data:
        return f"its tensors need {max(ends)} bytes of data but the file holds {data} (cut short)"
    return None


def check_safetensors(folder: str | Path, field: str = "model.name_or_path") -> None:
    """Refuse a model folder with a corrupt ``*.safetensors`` file, naming it.

    Args:
        folder: A local model folder.
        field: The config field that points at it (for the message).

    Raises:
        ValueError: Naming the file, what is wrong, and the fix.
    """
    for path in sorted(Path(folder).expanduser().glob("*.safetensors")):
        problem = _problem(path)
        if problem is not None:
            raise ValueError(
                f"{field}={folder}: {path} is corrupt ({problem}): a full disk or an interrupted copy or "
                "export. Copy or export the model again (a training run's final/ is written by train.py "
                "at its end; resume the run to write it)"
            )
