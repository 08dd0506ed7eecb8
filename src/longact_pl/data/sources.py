"""Sample sources: samples generated on demand by a synthetic task, or read from a JSONL file."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longact_pl.data.types import Sample, SampleSource, Task

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ROLES = ("system", "user", "assistant")


def derive_seed(seed: int, index: int) -> int:
    """Derive a 63-bit seed for item ``index`` of a source seeded with ``seed`` (stable across runs)."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class GeneratedSource:
    """``num_samples`` samples of a synthetic task, generated on demand (nothing is stored).

    Item ``i`` is ``task.generate(lengths[i % len(lengths)], derive_seed(seed, i), tokenizer)``, so a
    source is fully reproducible, and two sources with different seeds do not share samples.

    Args:
        task: The task that builds samples.
        num_samples: Number of items.
        lengths: Target prompt lengths in tokens, cycled over the items.
        seed: Source seed; use different seeds for train and validation.
        tokenizer: Tokenizer that measures lengths; usually set later by the DataModule
            (:meth:`set_tokenizer`).
    """

    def __init__(
        self,
        task: Task,
        num_samples: int,
        lengths: Sequence[int],
        seed: int,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"GeneratedSource: num_samples must be >= 1, got {num_samples}")
        if not lengths or min(lengths) < 1:
            raise ValueError(f"GeneratedSource: lengths must be positive token counts, got {list(lengths)}")
        self.task = task
        self.num_samples = num_samples
        self.lengths = [int(x) for x in lengths]
        self.seed = seed
        self.tokenizer = tokenizer

    def set_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Use ``tokenizer`` to measure prompt lengths."""
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        if self.tokenizer is None:
            raise RuntimeError("GeneratedSource has no tokenizer; call set_tokenizer() (the DataModule does)")
        length = self.lengths[index % len(self.lengths)]
        return self.task.generate(length, derive_seed(self.seed, index), self.tokenizer)


def _fail(path: Path, line: int, field: str, problem: str) -> ValueError:
    return ValueError(f"{path}:{line}: field {field!r}: {problem}")


def _parse_line(path: Path, lineno: int, text: str, fields: dict[str, str]) -> Sample:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise _fail(path, lineno, "<json>", f"not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise _fail(path, lineno, "<json>", f"expected a JSON object per line, got {type(record).__name__}")
    pf, mf, af = fields["prompt"], fields["messages"], fields["answer"]
    if (pf in record) == (mf in record):
        raise _fail(path, lineno, f"{pf}/{mf}", f"give exactly one of {pf!r} (a string) or {mf!r} (a list)")
    if pf in record:
        prompt: Any = record[pf]
        if not isinstance(prompt, str) or not prompt:
            raise _fail(path, lineno, pf, "must be a non-empty string")
    else:
        prompt = record[mf]
        if not isinstance(prompt, list) or not prompt:
            raise _fail(path, lineno, mf, 'must be a non-empty list of {"role": ..., "content": ...}')
        for k, msg in enumerate(prompt):
            ok = isinstance(msg, dict) and msg.get("role") in ROLES and isinstance(msg.get("content"), str)
            if not ok:
                raise _fail(
                    path, lineno, f"{mf}[{k}]", f"must be {{'role': one of {ROLES}, 'content': <string>}}"
                )
        prompt = [{"role": m["role"], "content": m["content"]} for m in prompt]
    if af not in record:
        raise _fail(path, lineno, af, "missing; add the reference answer (a string or a list of strings)")
    answer = record[af]
    refs = [answer] if isinstance(answer, str) else answer
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) and r for r in refs):
        raise _fail(path, lineno, af, "must be a non-empty string or a non-empty list of non-empty strings")
    task = record.get("task", path.stem)
    if not isinstance(task, str):
        raise _fail(path, lineno, "task", "must be a string when given")
    meta = {k: v for k, v in record.items() if k not in (pf, mf, af, "task")}
    meta.update(source=str(path), line=lineno)
    return Sample(prompt=prompt, references=list(refs), task=task, meta=meta)


def _decode(path: Path, lineno: int, raw: bytes) -> str:
    """One line as text: UTF-8, with a byte-order mark allowed at the start of the file."""
    try:
        return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as err:
        bad = raw[err.start : err.start + 1].hex()
        raise _fail(
            path, lineno, "<encoding>", f"byte 0x{bad} at column {err.start + 1} is not UTF-8; save the file "
            "as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
        ) from None  # fmt: skip


class JsonlSource:
    """Samples read from a JSON-lines file (read as data only; nothing in it is executed).

    Each non-blank line is an object with either ``prompt`` (the user message) or ``messages`` (a chat,
    ``[{"role": "user", "content": ...}, ...]``), and ``answer`` (a string or a list of strings, all
    expected in the completion). An optional ``task`` names the task (default: the file stem); other
    fields go to ``Sample.meta`` (a ``target_length`` there is used for per-length metrics).

    The file must be UTF-8 (a leading byte-order mark is accepted).

    Args:
        path: The ``.jsonl`` file.
        prompt_field: Name of the prompt field.
        messages_field: Name of the chat messages field.
        answer_field: Name of the answer field.
        config_key: Where this source sits in the config (``data.train``, ``data.val``), for messages.

    Raises:
        FileNotFoundError: If the file does not exist, naming ``<config_key>.path``.
        ValueError: On a malformed line (bad JSON, a missing field, bytes that are not UTF-8), naming the
            file, the 1-based line number and the field.
    """

    def __init__(
        self,
        path: str,
        prompt_field: str = "prompt",
        messages_field: str = "messages",
        answer_field: str = "answer",
        config_key: str = "data.train",
    ) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(
                f"JsonlSource: {self.path} does not exist; set {config_key}.path to a .jsonl file"
            )
        fields = {"prompt": prompt_field, "messages": messages_field, "answer": answer_field}
        self.samples: list[Sample] = []
        with self.path.open("rb") as f:
            for lineno, raw in enumerate(f, start=1):
                line = _decode(self.path, lineno, raw)
                if line.strip():
                    self.samples.append(_parse_line(self.path, lineno, line, fields))
        if not self.samples:
            raise ValueError(f"{self.path}: no samples (the file is empty)")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


def prompt_key(sample: Sample) -> str:
    """Return a hashable identity of a sample's prompt (the text, or the JSON of its messages)."""
    return sample.prompt if isinstance(sample.prompt, str) else json.dumps(sample.prompt, sort_keys=True)


def optional_jsonl(path: str | None, **kwargs: str) -> JsonlSource | None:
    """A :class:`JsonlSource`, or ``None`` when ``path`` is ``None`` (``data.val.path`` left unset).

    Args:
        path: The ``.jsonl`` file, or ``None`` for no source.
        **kwargs: The other arguments of :class:`JsonlSource`.
    """
    return None if path is None else JsonlSource(path, **kwargs)


def overlap(first: SampleSource, second: SampleSource) -> int:
    """How many items of ``second`` repeat a prompt of ``first`` (every item of both is read)."""
    seen = {prompt_key(first[i]) for i in range(len(first))}
    return sum(prompt_key(second[j]) in seen for j in range(len(second)))


def check_disjoint(first: SampleSource, second: SampleSource, limit: int | None = None) -> None:
    """Raise if any prompt of ``second`` also occurs in ``first`` (e.g. validation leaking into train).

    Args:
        first: Usually the train source.
        second: Usually the validation source.
        limit: Compare only the first ``limit`` items of each (generation costs time); ``None``: all.

    Raises:
        ValueError: Naming the first shared item.
    """
    n1 = len(first) if limit is None else min(limit, len(first))
    n2 = len(second) if limit is None else min(limit, len(second))
    seen = {prompt_key(first[i]): i for i in range(n1)}
    for j in range(n2):
        i = seen.get(prompt_key(second[j]))
        if i is not None:
            raise ValueError(
                f"item {j} of the second source repeats item {i} of the first; give them different seeds"
            )
