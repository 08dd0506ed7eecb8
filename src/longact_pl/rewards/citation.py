"""Citation reward (LongRLVR): F-beta of the chunk ids a completion cites against the evidence chunk ids."""

from __future__ import annotations

import re
from collections.abc import Sequence

_CITE = re.compile(r"\[([^\[\]]{1,64})\]")


def cited_ids(completion: str, known: Sequence[str]) -> set[str]:
    """Chunk ids cited as ``[id]`` (or ``[id1, id2]``) in ``completion`` that name a chunk of the prompt."""
    valid = set(known)
    found = set()
    for group in _CITE.findall(completion):
        found |= {part.strip() for part in group.split(",") if part.strip() in valid}
    return found


def f_beta(cited: set[str], gold: set[str], beta: float) -> float:
    """F-beta of a cited set against a gold set (0.0 when either is empty or nothing overlaps)."""
    hits = len(cited & gold)
    if hits == 0:
        return 0.0
    precision, recall = hits / len(cited), hits / len(gold)
    b2 = beta * beta
    return (1 + b2) * precision * recall / (b2 * precision + recall)


class CitationFBeta:
    """F-beta over cited chunk ids, for data that carries chunks and evidence.

    ``meta`` lists ``chunk_ids=[[ids of each prompt's chunks]]`` and ``evidence=[[gold ids]]``, one per
    completion (DocQA rows with ``chunks`` and ``evidence`` give both).

    A prompt without evidence ids scores 0.0 (so a mixed data set does not reward citing nothing).

    Args:
        beta: Weight of recall relative to precision (2.0 favours recall, LongRLVR's choice).
    """

    def __init__(self, beta: float = 2.0) -> None:
        if beta <= 0:
            raise ValueError(f"CitationFBeta: beta must be > 0, got {beta}")
        self.beta = beta

    def __call__(
        self, completions: Sequence[str], references: Sequence[Sequence[str]], **meta
    ) -> list[float]:
        """One score per completion, from ``meta["chunk_ids"]`` and ``meta["evidence"]``."""
        chunk_ids = meta.get("chunk_ids") or [[] for _ in completions]
        evidence = meta.get("evidence") or [[] for _ in completions]
        if len(chunk_ids) != len(completions) or len(evidence) != len(completions):
            raise ValueError("CitationFBeta: chunk_ids and evidence need one list per completion")
        return [
            f_beta(cited_ids(c, ids), set(gold), self.beta) if gold else 0.0
            for c, ids, gold in zip(completions, chunk_ids, evidence)
        ]
