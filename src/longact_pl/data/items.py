"""Makers of random needle keys and values: hyphenated word pairs, fixed-width numbers, uuids.

None of them can occur in the haystack fillers (those have no digits and no hyphenated words), so a
reference found in a completion can only come from a needle.
"""

from __future__ import annotations

import random
import uuid

from longact_pl.data.vocab import ADJECTIVES, NOUNS


class WordPairs:
    """Keys like ``"quiet-harbor"`` (adjective, hyphen, noun), as in RULER."""

    noun = "word"
    plural = "words"

    def make(self, rng: random.Random) -> str:
        """One random adjective-noun pair."""
        return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


class Numbers:
    """Numbers with exactly ``digits`` digits (no leading zero).

    Args:
        digits: Digit count (RULER uses 7).
    """

    noun = "number"
    plural = "numbers"

    def __init__(self, digits: int = 7) -> None:
        if digits < 1:
            raise ValueError(f"digits must be >= 1, got {digits}")
        self.digits = digits

    def make(self, rng: random.Random) -> str:
        """One random number as text."""
        return str(rng.randint(10 ** (self.digits - 1), 10**self.digits - 1))


class Uuids:
    """Random version-4 UUIDs drawn from the seeded generator (so they are reproducible)."""

    noun = "uuid"
    plural = "uuids"

    def make(self, rng: random.Random) -> str:
        """One random uuid string."""
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
