"""QA rewards on normalised answers: exact match, sub-string exact match and token F1 (max over references).

All three score the final answer (:func:`~longact_pl.rewards.answers.extract_answer`) when ``extract`` is
on, and 0.0 when the completion states none; with ``extract`` off the whole completion is the answer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from longact_pl.rewards.answers import answer_of, check_batch, normalize_answer

_YES_NO = ("yes", "no", "noanswer")


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised strings are equal."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def substring_match(prediction: str, reference: str) -> float:
    """QwenLong-L1's ``sub_em``: 1.0 when either normalised string contains the other (empty: never)."""
    pred, ref = normalize_answer(prediction), normalize_answer(reference)
    return float(bool(pred) and bool(ref) and (ref in pred or pred in ref))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 of the normalised strings (a yes/no/noanswer answer must match exactly)."""
    pred, ref = normalize_answer(prediction), normalize_answer(reference)
    if (pred in _YES_NO or ref in _YES_NO) and pred != ref:
        return 0.0
    common = Counter(pred.split()) & Counter(ref.split())
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred.split()), same / len(ref.split())
    return 2 * precision * recall / (precision + recall)


class _MaxOverReferences:
    """Base: ``metric(answer, reference)`` maximised over a completion's references."""

    metric = staticmethod(exact_match)

    def __init__(self, extract: bool = True) -> None:
        self.extract = extract

    def one(self, completion: str, references: Sequence[str]) -> float:
        """The score of one completion."""
        answer = answer_of(completion, self.extract)
        if answer is None:
            return 0.0
        return max(self.metric(answer, r) for r in references)

    def __call__(
        self, completions: Sequence[str], references: Sequence[Sequence[str]], **meta
    ) -> list[float]:
        """One score per completion (``meta`` is ignored)."""
        check_batch(completions, references, type(self).__name__)
        return [self.one(c, r) for c, r in zip(completions, references)]


class ExactMatch(_MaxOverReferences):
    r"""1.0 when the (extracted) answer equals a reference after normalisation.

    Args:
        extract: Score the final answer (``the answer is X`` / ``\\boxed{X}``), not the whole completion.
    """

    metric = staticmethod(exact_match)


class SubstringMatch(_MaxOverReferences):
    """QwenLong-L1's sub-string exact match: 1.0 when answer and a reference contain one another.

    Args:
        extract: Score the final answer, not the whole completion.
    """

    metric = staticmethod(substring_match)


class TokenF1(_MaxOverReferences):
    """SQuAD token F1 against the best reference; with ``threshold`` a 0/1 reward (LoongRL: F1 > 0.5).

    Args:
        extract: Score the final answer, not the whole completion.
        threshold: ``None``: the F1 itself; else 1.0 when F1 > threshold, 0.0 otherwise.
    """

    metric = staticmethod(token_f1)

    def __init__(self, extract: bool = True, threshold: float | None = None) -> None:
        super().__init__(extract)
        if threshold is not None and not 0.0 <= threshold < 1.0:
            raise ValueError(f"TokenF1: threshold must be in [0, 1) or null, got {threshold}")
        self.threshold = threshold

    def one(self, completion: str, references: Sequence[str]) -> float:
        """F1 (or its thresholded 0/1) of one completion."""
        f1 = super().one(completion, references)
        return f1 if self.threshold is None else float(f1 > self.threshold)
