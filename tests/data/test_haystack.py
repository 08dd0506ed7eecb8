import random
import re

import pytest

from longact_pl.data.haystack import (
    NOISE_SENTENCES,
    EssayHaystack,
    NoiseHaystack,
    SentencePool,
    insert_at_depths,
)


def test_insert_at_depths_positions():
    units = ["a", "b", "c", "d"]
    assert insert_at_depths(units, ["X"], [0.5]) == ["a", "b", "X", "c", "d"]
    assert insert_at_depths(units, ["X"], [0.0]) == ["X", "a", "b", "c", "d"]
    assert insert_at_depths(units, ["X"], [1.0]) == ["a", "b", "c", "d", "X"]
    # 0.3 * 4 = 1.2 -> slot 1; equal depths keep item order.
    assert insert_at_depths(units, ["X", "Y", "Z"], [0.3, 0.3, 0.9]) == ["a", "X", "Y", "b", "c", "d", "Z"]


def test_insert_at_depths_errors():
    with pytest.raises(ValueError, match="2 items but 1 depths"):
        insert_at_depths(["a"], ["X", "Y"], [0.5])
    with pytest.raises(ValueError, match="outside"):
        insert_at_depths(["a"], ["X"], [1.5])


def test_noise_haystack_cycles_ruler_sentences():
    pool = SentencePool(NoiseHaystack(), random.Random(0))
    got = pool.take(7)
    assert got[0] == "The grass is green."
    assert got[5] == NOISE_SENTENCES[0] and got[6] == NOISE_SENTENCES[1]


def test_essay_haystack_is_clean_prose():
    pool = SentencePool(EssayHaystack(), random.Random(3))
    sentences = pool.take(300)
    text = " ".join(sentences)
    assert not re.search(r"\d", text)  # cannot collide with numeric needle values
    assert "-" not in text  # cannot collide with hyphenated word keys
    assert not re.search(r"\b[Aa] [aeiou]", text)  # article fixed to "an"
    assert all(s[0].isupper() and s.endswith(".") for s in sentences)
    assert len(set(sentences)) > 250
    # The prefix does not change when more is drawn.
    assert SentencePool(EssayHaystack(), random.Random(3)).take(10) == sentences[:10]
