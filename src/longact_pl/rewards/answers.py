r"""Answer text rules shared by the QA rewards: SQuAD normalisation and final-answer extraction.

``normalize_answer`` is the SQuAD / HotpotQA rule QwenLong-L1 and LongBench score with: lower case, drop
punctuation, drop the articles ``a``/``an``/``the``, collapse whitespace. ``extract_answer`` finds the final
answer of a reasoning completion: the text after the last ``</think>``, then the last ``\\boxed{...}`` or the
text after the last ``answer is`` (QwenLong-L1's ``Therefore, the answer is X``).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
_PHRASE = re.compile(r"\banswer is", re.IGNORECASE)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def last_boxed(text: str) -> str | None:
    r"""The content of the last ``\\boxed{...}`` (nested braces allowed), or ``None``."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None


def extract_answer(completion: str) -> str | None:
    r"""The final answer of ``completion``: last ``\\boxed{}``, else after the last ``answer is``.

    The reasoning before a ``</think>`` is dropped first; ``*`` (markdown bold) is ignored.

    Returns:
        The answer with surrounding whitespace and a trailing period stripped, or ``None`` when the
        completion states no final answer in either form.
    """
    text = completion.split("</think>")[-1].replace("*", "")
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    found = list(_PHRASE.finditer(text))
    if not found:
        return None
    answer = text[found[-1].end() :].strip().strip(".").strip()
    answer = answer[1:-1].strip() if answer.startswith("(") and answer.endswith(")") else answer
    return answer or None


def answer_of(completion: str, extract: bool) -> str | None:
    """``extract_answer(completion)`` when ``extract``, else the whole completion stripped."""
    return extract_answer(completion) if extract else completion.strip()


def check_batch(completions: Sequence[str], references: Sequence[Sequence[str]], name: str) -> None:
    """Raise unless there is one non-empty reference list per completion."""
    if len(completions) != len(references):
        raise ValueError(
            f"{name}: got {len(completions)} completions but {len(references)} reference lists; "
            "repeat each prompt's references once per completion"
        )
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"{name}: references[{i}] must be a non-empty list of strings, got {refs!r}")
