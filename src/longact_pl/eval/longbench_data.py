"""Load LongBench v2 rows from a local JSON / JSONL / parquet file or a dataset already in the local HF cache.

Nothing is downloaded: a dataset id is read with ``datasets`` in offline mode, so it must be in the cache.
Every row is checked; a bad row fails with the file, the row and the field, and how to fix it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

FIELDS = (
    "_id", "domain", "sub_domain", "difficulty", "length", "question",
    "choice_A", "choice_B", "choice_C", "choice_D", "answer", "context",
)  # fmt: skip
ALLOWED = {
    "answer": ("A", "B", "C", "D"),
    "difficulty": ("easy", "hard"),
    "length": ("short", "medium", "long"),
}
SUFFIXES = (".json", ".jsonl", ".parquet")
GET_DATA = (
    "get LongBench v2's data.json (https://huggingface.co/datasets/THUDM/LongBench-v2) on a machine with "
    "network and pass eval.path=/path/to/data.json"
)


def _read_json(path: Path) -> list[tuple[str, object]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((f"line {lineno}", json.loads(line)))
                except json.JSONDecodeError as err:
                    raise ValueError(
                        f"{path}: line {lineno}: not valid JSON ({err.msg}); one object per line"
                    ) from None
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno}); expected a list of rows"
        ) from None
    if not isinstance(data, list):
        raise ValueError(
            f"{path}: expected a JSON list of rows (LongBench v2's data.json), got {type(data).__name__}"
        )
    return [(f"row {i + 1}", r) for i, r in enumerate(data)]


def _read_parquet(path: Path) -> list[tuple[str, object]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(
            f"reading {path} needs pyarrow (pip install pyarrow); or convert it to JSON/JSONL"
        ) from None
    return [(f"row {i + 1}", r) for i, r in enumerate(pq.read_table(path).to_pylist())]


def _read_cached_dataset(name: str, split: str) -> list[tuple[str, object]]:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise ImportError(
            f"eval.path={name!r} is not a local file, and reading it as a Hugging Face dataset id needs the "
            f"`datasets` package (pip install datasets); or {GET_DATA}"
        ) from None
    try:
        data = datasets.load_dataset(name, split=split)
    except Exception as err:  # any loader failure: most often "not in the cache, and offline"
        raise FileNotFoundError(
            f"could not load dataset {name!r} (split {split!r}) from the local Hugging Face cache, offline: "
            f"{type(err).__name__}: {err}; {GET_DATA}"
        ) from err
    return [(f"row {i + 1}", r) for i, r in enumerate(data)]


def _check_row(source: str, where: str, row: object) -> dict:
    if not isinstance(row, dict):
        raise ValueError(
            f"{source}: {where}: expected an object with fields {list(FIELDS)}, got {type(row).__name__}"
        )
    ident = row.get("_id", "?")
    for field in FIELDS:
        if field not in row or row[field] is None:
            raise ValueError(
                f"{source}: {where} (_id={ident}): field {field!r} is missing; every LongBench v2 row needs "
                f"{', '.join(FIELDS)}"
            )
        if not isinstance(row[field], str):
            raise ValueError(
                f"{source}: {where} (_id={ident}): field {field!r} must be a string, "
                f"got {type(row[field]).__name__}"
            )
    for field, allowed in ALLOWED.items():
        if row[field] not in allowed:
            raise ValueError(
                f"{source}: {where} (_id={ident}): field {field!r} is {row[field]!r}; "
                f"it must be one of {allowed}"
            )
    return {f: row[f] for f in FIELDS}


def load_longbench(path: str, split: str = "train", limit: int | None = None) -> list[dict]:
    """Read and validate LongBench v2 rows.

    Args:
        path: A ``.json`` (list of rows, like the official ``data.json``), ``.jsonl`` or ``.parquet`` file,
            or a dataset id (``THUDM/LongBench-v2``) already in the local Hugging Face cache.
        split: Split of a dataset id.
        limit: Keep only the first ``limit`` rows (``None`` = all).

    Returns:
        Rows with exactly the fields in :data:`FIELDS`.

    Raises:
        FileNotFoundError: If a file path does not exist, or a dataset id is not in the cache.
        ImportError: If a needed optional package (``datasets``, ``pyarrow``) is missing.
        ValueError: On a malformed row, naming the source, the row and the field; on duplicated ids.
    """
    if not path or path == "???":
        raise ValueError(f"eval.path is required for eval=longbench_v2; {GET_DATA}")
    if limit is not None and limit < 1:
        raise ValueError(f"eval.limit must be >= 1 or null, got {limit}")
    file = Path(path).expanduser()
    if file.is_file():
        if file.suffix not in SUFFIXES:
            raise ValueError(f"{file}: unsupported file type {file.suffix!r}; use one of {SUFFIXES}")
        raw = _read_parquet(file) if file.suffix == ".parquet" else _read_json(file)
        source = str(file)
    elif file.suffix in SUFFIXES or file.exists() or path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise FileNotFoundError(f"eval.path={path}: no such file; {GET_DATA}")
    else:
        raw, source = _read_cached_dataset(path, split), f"{path}[{split}]"
    rows, seen = [], set()
    for where, row in raw[:limit] if limit else raw:
        checked = _check_row(source, where, row)
        if checked["_id"] in seen:
            raise ValueError(
                f"{source}: {where}: _id {checked['_id']!r} repeats an earlier row; ids must be unique"
            )
        seen.add(checked["_id"])
        rows.append(checked)
    if not rows:
        raise ValueError(f"{source}: no rows")
    return rows
