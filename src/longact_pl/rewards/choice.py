"""Multiple choice: the letter the completion picks against the gold letter."""

from __future__ import annotations

import re
from collections.abc import Sequence

from longact_pl.rewards.answers import check_batch, extract_answer

_LETTER = re.compile(r"^\(?([A-Z])\)?(?:[\s.:)]|$)")


def chosen_letter(completion: str, letters: str) -> str | None:
    r"""The option letter a completion picks (one of ``letters``), or ``None``.

    Its final answer (``the answer is (B)``, ``\\boxed{B}``) when it states one, else the whole completion,
    must start with the letter (``B``, ``(B)``, ``B.``).
    """
    answer = extract_answer(completion)
    text = (answer if answer is not None else completion).strip().replace("*", "")
    match = _LETTER.match(text)
    return match.group(1) if match and match.group(1) in letters else None


class MultipleChoice:
    """1.0 when the chosen letter equals the gold letter (``references[i][0]``, e.g. ``"C"``).

    Args:
        letters: The option letters.
    """

    def __init__(self, letters: str = "ABCD") -> None:
        if not letters or not letters.isalpha() or not letters.isupper():
            raise ValueError(f"MultipleChoice: letters must be upper-case letters, got {letters!r}")
        self.letters = letters

    def __call__(
        self, completions: Sequence[str], references: Sequence[Sequence[str]], **meta
    ) -> list[float]:
        """One score per completion (``meta`` is ignored)."""
        check_batch(completions, references, "MultipleChoice")
        out = []
        for c, refs in zip(completions, references):
            gold = refs[0].strip().strip("()").upper()
            out.append(float(chosen_letter(c, self.letters) == gold))
        return out
