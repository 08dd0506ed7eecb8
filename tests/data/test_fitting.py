import pytest

from longact_pl.data.fitting import fit_units


def words(text: str) -> int:
    return len(text.split())


def test_fit_units_lands_on_exact_unit_count():
    # 3 fixed words + 2 words per unit: 101 words needs n = 49 units.
    calls = []

    def render(n):
        calls.append(n)
        return "a b c " + "x y " * n

    text, n, tokens = fit_units(render, words, target=101, per_unit_tokens=1.0)
    assert (n, tokens) == (49, 101)
    assert text.split()[:3] == ["a", "b", "c"]
    # The secant search needs only a few renderings even from a bad first guess (+1 for the result).
    assert len(calls) <= 5


def test_fit_units_picks_closest_when_units_are_coarse():
    # 10 fixed words + 7 per unit; target 50 -> n=6 gives 52 (off 2), n=5 gives 45 (off 5).
    text, n, tokens = fit_units(lambda n: "w " * (10 + 7 * n), words, target=50, per_unit_tokens=7.0)
    assert (n, tokens) == (6, 52)


def test_fit_units_rejects_target_below_fixed_part():
    with pytest.raises(ValueError, match="too short: the fixed part of the prompt alone is 40 tokens"):
        fit_units(lambda n: "w " * (40 + n), words, target=30, per_unit_tokens=1.0)


def test_fit_units_rejects_units_too_coarse():
    # 100 words per unit; target 150 from 10 fixed words: best is 110 (27% off).
    with pytest.raises(ValueError, match="could not fit the prompt to 150 tokens"):
        fit_units(lambda n: "w " * (10 + 100 * n), words, target=150, per_unit_tokens=100.0)
