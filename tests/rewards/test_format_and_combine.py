import pytest

from longact_pl.rewards.combine import WeightedSum
from longact_pl.rewards.format import ConciseAnswer
from longact_pl.rewards.string_match import StringMatchAll


def test_concise_answer():
    reward = ConciseAnswer(max_words=3)
    completions = ["one two three", "one two three four", "  \x01 ", "ok"]
    assert reward(completions, [["x"]] * 4) == [1.0, 0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="max_words must be >= 1"):
        ConciseAnswer(max_words=0)


def test_weighted_sum_hand_values():
    reward = WeightedSum([StringMatchAll(), ConciseAnswer(max_words=3)], [1.0, 0.25])
    completions = ["1234567", "it is 1234567 I think", "no idea at all really"]
    refs = [["1234567", "42"], ["1234567"], ["1234567"]]
    # match: 0.5, 1.0, 0.0; concise: 1, 0, 0.
    assert reward(completions, refs, tasks=["a"] * 3) == [0.75, 1.0, 0.0]


def test_weighted_sum_checks_lengths():
    with pytest.raises(ValueError, match="got 1 terms and 2 weights"):
        WeightedSum([StringMatchAll()], [1.0, 2.0])
    with pytest.raises(ValueError, match="returned 1 scores"):
        WeightedSum([lambda c, r, **m: [1.0]], [1.0])(["a", "b"], [["a"], ["b"]])
