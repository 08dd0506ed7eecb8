"""Long-document QA data: a JSONL schema, prompt templates (QwenLong-L1's as a preset), and prompt fitting.

One JSON object per line::

    {"context": "<document>", "question": "...", "answers": ["...", ...], "source": "hotpotqa",
     "chunks": [{"id": "c1", "text": "..."}, ...], "evidence": ["c1"], "id": "..."}

``context`` (a string) or ``chunks`` (then the document is the chunks as ``[id] text`` paragraphs, so an
answer can cite them) is required, as are ``question`` and ``answers`` (a non-empty list of strings; a string
is taken as a one-element list). ``source`` names the data set (per-source metrics; default: the file stem),
``evidence`` lists the chunk ids that support the answer (the citation reward), ``id`` names the row.

A prompt is the template with ``$DOC$`` and ``$Q$`` filled; when it is longer than ``max_prompt_tokens``
only the middle of the document is cut (its first and last halves are kept): the question and the
instructions always stay whole.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longact_pl.data.prompting import encode_prompt, middle_truncate, template_ids, to_messages
from longact_pl.data.sources import _decode, _fail
from longact_pl.data.types import Sample

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# QwenLong-L1's DocQA prompt (its training data and evaluation scripts): answer after "the answer is".
QWENLONG_L1 = (
    "Please read the following text and answer the question below.\n\n<text>\n$DOC$\n</text>\n\n$Q$\n\n"
    'Format your response as follows: "Therefore, the answer is (insert answer here)".'
)
# The same, asking for the ids of the chunks used ([c1], [c2]) for the citation reward.
QWENLONG_L1_CITE = (
    "Please read the following text and answer the question below.\n\n<text>\n$DOC$\n</text>\n\n$Q$\n\n"
    "Cite the paragraphs you used by their ids in brackets, e.g. [c1]. "
    'Format your response as follows: "Therefore, the answer is (insert answer here)".'
)
PRESETS = {"qwenlong_l1": QWENLONG_L1, "qwenlong_l1_cite": QWENLONG_L1_CITE}
_SLOT = re.compile(r"\$(DOC|Q)\$")


def resolve_template(template: str) -> str:
    """A preset's text (``qwenlong_l1``, ``qwenlong_l1_cite``), or ``template`` itself when it has both slots.

    Raises:
        ValueError: If it is neither a preset name nor a text with ``$DOC$`` and ``$Q$``.
    """
    text = PRESETS.get(template, template)
    if "$DOC$" not in text or "$Q$" not in text:
        raise ValueError(
            f"data.template={template[:60]!r} is neither a preset ({', '.join(PRESETS)}) nor a text with "
            "the slots $DOC$ and $Q$"
        )
    return text


def fill(template: str, document: str, question: str) -> str:
    """The template with ``$DOC$`` and ``$Q$`` filled in one pass (a ``$Q$`` inside the document stays)."""
    values = {"DOC": document, "Q": question.strip()}
    return _SLOT.sub(lambda m: values[m.group(1)], template)


def fit_document(
    tokenizer: PreTrainedTokenizerBase,
    template: str,
    document: str,
    question: str,
    max_prompt_tokens: int | None,
    system_prompt: str | None = None,
) -> tuple[list[int], bool]:
    """Chat-templated ids of the filled template, the document's middle cut to fit ``max_prompt_tokens``.

    Returns:
        ``(ids, truncated)``.

    Raises:
        ValueError: If the prompt without any document already exceeds ``max_prompt_tokens``.
    """
    full = fill(template, document, question)
    if max_prompt_tokens is None:
        return encode_prompt(tokenizer, full, None, system_prompt)
    empty = len(template_ids(tokenizer, to_messages(fill(template, "", question), system_prompt)))
    keep = max_prompt_tokens - empty
    if keep < 0:
        raise ValueError(
            f"the DocQA prompt without its document is {empty} tokens, more than data.max_prompt_tokens="
            f"{max_prompt_tokens} (question: {question[:60]!r}); raise data.max_prompt_tokens"
        )
    cut = middle_truncate(tokenizer, document, keep)
    ids = template_ids(tokenizer, to_messages(fill(template, cut, question), system_prompt))
    while len(ids) > max_prompt_tokens and keep > 0:  # re-encoding across the cut can add a token or two
        keep = max(0, keep - (len(ids) - max_prompt_tokens))
        cut = middle_truncate(tokenizer, document, keep)
        ids = template_ids(tokenizer, to_messages(fill(template, cut, question), system_prompt))
    return ids, cut != document


def _strings(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v.strip() for v in value)


def parse_row(path: Path, lineno: int, text: str, template: str) -> Sample:
    """One DocQA row as a :class:`Sample` (``meta`` holds what prompt fitting and the rewards need).

    Raises:
        ValueError: ``<file>:<line>: field '<name>': <problem and fix>``.
    """
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        raise _fail(path, lineno, "<json>", f"not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(row, dict):
        raise _fail(path, lineno, "<json>", f"expected a JSON object per line, got {type(row).__name__}")
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise _fail(path, lineno, "question", "missing or empty; give the question as a non-empty string")
    answers = row.get("answers")
    answers = [answers] if isinstance(answers, str) else answers
    if not _strings(answers):
        raise _fail(path, lineno, "answers", "must be a non-empty list of non-empty strings")
    chunks = row.get("chunks")
    chunk_ids: list[str] = []
    if chunks is not None:
        if not isinstance(chunks, list) or not chunks:
            raise _fail(path, lineno, "chunks", 'must be a non-empty list of {"id": str, "text": str}')
        for k, chunk in enumerate(chunks):
            if not (isinstance(chunk, dict) and isinstance(chunk.get("id"), (str, int))
                    and isinstance(chunk.get("text"), str)):  # fmt: skip
                raise _fail(path, lineno, f"chunks[{k}]", 'must be {"id": <string>, "text": <string>}')
        chunk_ids = [str(c["id"]) for c in chunks]
        if len(set(chunk_ids)) != len(chunk_ids):
            raise _fail(path, lineno, "chunks", "chunk ids must be unique within a row")
    context = row.get("context")
    if context is None and chunks is not None:
        context = "\n\n".join(f"[{c['id']}] {c['text']}" for c in chunks)
    if not isinstance(context, str) or not context.strip():
        raise _fail(path, lineno, "context", "missing or empty; give the document text (or 'chunks')")
    evidence = row.get("evidence", [])
    if not isinstance(evidence, list) or not all(str(e) in chunk_ids for e in evidence):
        raise _fail(path, lineno, "evidence", "must be a list of ids of this row's 'chunks'")
    source = row.get("source", path.stem)
    if not isinstance(source, str) or not source:
        raise _fail(path, lineno, "source", "must be a non-empty string (the data set's name)")
    meta = {"question": question.strip(), "context": context, "template": template, "line": lineno,
            "id": str(row.get("id", f"{path.stem}:{lineno}")), "file": str(path)}  # fmt: skip
    if chunks is not None:
        meta.update(chunk_ids=chunk_ids, evidence=[str(e) for e in evidence])
    return Sample(prompt=fill(template, context, question), references=list(answers), task=source, meta=meta)


class DocQASource:
    """DocQA rows of a JSON-lines file (see the module docstring for the schema).

    Args:
        path: The ``.jsonl`` file (UTF-8).
        template: A preset name (``qwenlong_l1``, ``qwenlong_l1_cite``) or a text with ``$DOC$`` and ``$Q$``.
        limit: Read only the first ``limit`` rows (``None``: all).
        config_key: Where this source sits in the config, for messages.

    Raises:
        FileNotFoundError: Naming ``<config_key>.path``.
        ValueError: ``<file>:<line>: field '<name>': ...`` on a bad row.
    """

    def __init__(
        self,
        path: str,
        template: str = "qwenlong_l1",
        limit: int | None = None,
        config_key: str = "data.train",
    ) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"DocQASource: {self.path} does not exist; set {config_key}.path")
        self.template = resolve_template(template)
        self.samples: list[Sample] = []
        with self.path.open("rb") as f:
            for lineno, raw in enumerate(f, start=1):
                line = _decode(self.path, lineno, raw)
                if line.strip():
                    self.samples.append(parse_row(self.path, lineno, line, self.template))
                if limit is not None and len(self.samples) >= limit:
                    break
        if not self.samples:
            raise ValueError(f"{self.path}: no DocQA rows (the file is empty)")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


def optional_docqa(path: str | None, **kwargs: Any) -> DocQASource | None:
    """A :class:`DocQASource`, or ``None`` when ``path`` is ``None`` (no validation file)."""
    return None if path is None else DocQASource(path, **kwargs)
