"""Haystack fillers (RULER's repeated noise sentences, or synthetic essay prose) and needle insertion.

A haystack is an endless stream of sentences drawn from a ``random.Random``; :class:`SentencePool` keeps
the prefix drawn so far, so "the first ``n`` sentences" is a pure function of ``n`` for one seed, which is
what :func:`longact_pl.data.fitting.fit_units` needs.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterator, Sequence
from typing import Protocol

from longact_pl.data.vocab import ADJECTIVES, ADVERBS, NOUNS, VERBS

NOISE_SENTENCES: tuple[str, ...] = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
)

# Slots: {A} adjective, {N} noun, {Ns} plural noun, {V} verb (third person), {Vb} verb (base), {R} adverb.
ESSAY_TEMPLATES: tuple[str, ...] = (
    "The {A} {N} {V} the {N} near the {N}.",
    "Every {N} {R} {V} a {A} {N}.",
    "Many {Ns} {Vb} the {A} {Ns} of the {N}.",
    "A {A} {N} is never far from a {A} {N}.",
    "In the {A} {N}, the {Ns} {Vb} what the {N} cannot.",
    "When the {N} is {A}, the {Ns} {R} {Vb} the {N}.",
    "Nobody {V} a {A} {N} without a {N}.",
    "The question of the {N} is {R} a question of the {N}.",
    "It is {A} to {Vb} a {N} before the {N} {V} it.",
    "Our {Ns} {Vb} the {N} because the {N} is {A}.",
    "There is a {A} {N} behind every {A} {N}.",
    "The {Ns} of the {N} {R} {Vb} the {A} {N}.",
    "If you {Vb} the {N}, the {N} will {Vb} you.",
    "Each {A} {N} {V} its own {N}.",
    "The best {Ns} {Vb} {A} {Ns}, not {A} {Ns}.",
    "A {N} that {V} the {N} is a {A} {N}.",
    "Between the {N} and the {N} lies a {A} {N}.",
    "Over time, the {A} {Ns} {Vb} the {N}.",
    "The {N} {R} {V} what the {A} {N} {V}.",
    "Few {Ns} {Vb} the {N} as {R} as the {A} {Ns} do.",
)

_SLOT = re.compile(r"\{(A|N|Ns|V|Vb|R)\}")
_ARTICLE = re.compile(r"\b([Aa]) ([aeiou])")


class Haystack(Protocol):
    """An endless source of filler sentences."""

    def stream(self, rng: random.Random) -> Iterator[str]:
        """Yield filler sentences forever, drawing any randomness from ``rng``."""
        ...


class NoiseHaystack:
    """RULER's noise haystack: the same few plain sentences repeated in order.

    Args:
        sentences: The sentences to cycle through; ``None`` means RULER's "The grass is green. ..." five.
    """

    def __init__(self, sentences: Sequence[str] | None = None) -> None:
        self.sentences = tuple(sentences) if sentences else NOISE_SENTENCES

    def stream(self, rng: random.Random) -> Iterator[str]:
        """Cycle through the sentences (``rng`` is unused: the noise is the same for every seed)."""
        return itertools.cycle(self.sentences)


class EssayHaystack:
    """Synthetic essay-like prose: sentence templates filled with random everyday words.

    The words never include digits or hyphens, so they cannot be mistaken for needle keys or values.

    Args:
        templates: Sentence templates with ``{A} {N} {Ns} {V} {Vb} {R}`` slots; ``None`` means the
            built-in :data:`ESSAY_TEMPLATES`.
    """

    def __init__(self, templates: Sequence[str] | None = None) -> None:
        self.templates = tuple(templates) if templates else ESSAY_TEMPLATES

    def sentence(self, rng: random.Random) -> str:
        """One random sentence."""
        words = {
            "A": lambda: rng.choice(ADJECTIVES),
            "N": lambda: rng.choice(NOUNS),
            "Ns": lambda: rng.choice(NOUNS) + "s",
            "V": lambda: rng.choice(VERBS) + "s",
            "Vb": lambda: rng.choice(VERBS),
            "R": lambda: rng.choice(ADVERBS),
        }
        text = _SLOT.sub(lambda m: words[m.group(1)](), rng.choice(self.templates))
        text = _ARTICLE.sub(lambda m: m.group(1) + "n " + m.group(2), text)
        return text[0].upper() + text[1:]

    def stream(self, rng: random.Random) -> Iterator[str]:
        """Yield random sentences forever."""
        while True:
            yield self.sentence(rng)


class SentencePool:
    """The growing prefix of one haystack stream.

    Args:
        haystack: The filler source.
        rng: Random source reserved for this pool (so the prefix depends on the seed only).
    """

    def __init__(self, haystack: Haystack, rng: random.Random) -> None:
        self._stream = haystack.stream(rng)
        self._drawn: list[str] = []

    def take(self, n: int) -> list[str]:
        """Return the first ``n`` sentences of the stream."""
        if n > len(self._drawn):
            self._drawn.extend(itertools.islice(self._stream, n - len(self._drawn)))
        return self._drawn[:n]


def insert_at_depths(units: Sequence[str], items: Sequence[str], depths: Sequence[float]) -> list[str]:
    """Insert ``items[k]`` between filler units at fraction ``depths[k]`` of the filler.

    Depth 0 puts an item before the first unit, depth 1 after the last one. Items with equal depths keep
    their order.

    Args:
        units: Filler units (sentences, documents).
        items: Units to insert (needles).
        depths: One fraction in ``[0, 1]`` per item.

    Raises:
        ValueError: If the lengths differ or a depth is outside ``[0, 1]``.
    """
    if len(items) != len(depths):
        raise ValueError(f"got {len(items)} items but {len(depths)} depths")
    for d in depths:
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"depth {d} is outside [0, 1]")
    n = len(units)
    slots: dict[int, list[str]] = {}
    for item, depth in zip(items, depths):
        slots.setdefault(round(depth * n), []).append(item)
    out: list[str] = []
    for i in range(n + 1):
        out.extend(slots.get(i, ()))
        if i < n:
            out.append(units[i])
    return out
