"""Word lists and a pseudo-word maker, all built in code so that task generation needs no download.

The lists are deliberately plain: nouns take a regular ``-s`` plural and verbs a regular ``-s`` third
person, so sentence templates can inflect them without a dictionary.
"""

from __future__ import annotations

import random


def _words(text: str) -> tuple[str, ...]:
    """Split a whitespace-separated word list."""
    return tuple(text.split())


NOUNS: tuple[str, ...] = _words(
    """
    anchor apple arrow badge banner barrel basket beacon bell blanket boat bottle bridge bucket
    cabin camera candle canyon carpet castle cellar chair chapter cliff cloud coat collar cottage
    crater crystal cup curtain desk diagram dinner doctor dragon drawer engine farmer feather fence
    field flower forest fountain friend garden gate glacier hammer harbor helmet hill island jacket
    journal kettle kingdom kitchen ladder lake lamp lantern letter lighthouse magnet market meadow
    mirror mountain museum needle notebook ocean orchard painter palace paper pencil pillow planet
    pocket pond poster puzzle rabbit railway record ribbon river road rocket saddle sailor scholar
    school season shadow shovel signal sofa singer soldier spider spoon stable station statue stone
    storm student summit table teacher temple theater thread ticket tiger tower tractor traveler
    tunnel turtle valley village violin wagon wall window winter wizard worker writer
    """
)

ADJECTIVES: tuple[str, ...] = _words(
    """
    ancient bitter blunt bold brave breezy bright brisk calm careful cheerful chilly clever cold
    curious damp dark distant dusty eager early elegant empty faint fancy fierce fragile friendly
    gentle giant glossy golden graceful grumpy hollow honest humble hungry icy jolly keen lazy
    little lively lonely loud lucky modest muddy narrow nervous noble odd old pale patient plain
    polite proud quick quiet rapid rare rough round rusty sandy shiny short silent silver simple
    sleepy slow smooth soft sour steady stormy strange sturdy sunny swift tall tender thin tidy tiny
    tough vivid warm wary wild windy wise witty wooden young
    """
)

# Base forms whose third person singular is the base form plus "s".
VERBS: tuple[str, ...] = _words(
    """
    admire alter answer avoid borrow build clean collect consider cover create decide defend
    describe design discover divide enjoy explain explore follow gather guide improve include
    inspect invent join keep lead learn limit listen measure mention move observe offer open paint
    plan prepare protect provide read record remember repair reveal shape share shelter support
    arrange capture visit wander notice welcome
    """
)

ADVERBS: tuple[str, ...] = _words(
    """
    always barely calmly carefully certainly clearly closely eagerly easily often gently gladly
    honestly largely mostly nearly never openly partly quickly quietly rarely readily seldom simply
    slowly softly sometimes steadily surely usually
    """
)

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "tr", "st")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "", "", "n", "r", "l", "s", "m")


def pseudo_word(rng: random.Random, syllables: int = 3) -> str:
    """Make a pronounceable lowercase non-word such as ``"dorvami"``.

    Args:
        rng: The random source.
        syllables: Number of consonant-vowel syllables.
    """
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)]
    return "".join(parts) + rng.choice(_CODAS)


def distinct(make, count: int, exclude: set[str] | None = None, max_tries: int = 1000) -> list[str]:
    """Call ``make()`` until ``count`` distinct strings not in ``exclude`` are collected.

    Args:
        make: A zero-argument callable returning a string.
        count: How many distinct strings to return.
        exclude: Strings that must not be returned (updated in place with the new ones).
        max_tries: Extra calls allowed beyond ``count`` before giving up.

    Raises:
        ValueError: If the maker cannot produce enough distinct strings.
    """
    seen = exclude if exclude is not None else set()
    out: list[str] = []
    tries = 0
    while len(out) < count:
        item = make()
        tries += 1
        if item not in seen:
            seen.add(item)
            out.append(item)
        elif tries > count + max_tries:
            raise ValueError(f"could only make {len(out)} distinct items of the {count} asked for")
    return out
