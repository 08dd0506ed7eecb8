import pytest

from longact_pl.rewards.string_match import (
    StringMatchAll,
    StringMatchPart,
    match_all,
    match_part,
    postprocess,
)


def test_postprocess_replaces_control_chars_and_strips():
    assert postprocess("\x00 abc\x07def\t \n") == "abc\ndef"
    assert postprocess("  plain  ") == "plain"


def test_match_all_hand_values():
    refs = ["1234567", "7654321"]
    assert match_all("Both: 1234567 and 7654321.", refs) == 1.0
    assert match_all("Only 7654321 here", refs) == 0.5
    assert match_all("nothing", refs) == 0.0
    assert match_all("ANSWER: Quiet-Harbor", ["quiet-harbor"]) == 1.0  # case-insensitive
    assert match_all("abc", ["A", "B", "C", "D"]) == 0.75
    # A control character inside the value breaks it (RULER turns it into a newline).
    assert match_all("12345\x0067", ["1234567"]) == 0.0


def test_match_part_hand_values():
    refs = ["paris", "lyon"]
    assert match_part("I think LYON", refs) == 1.0
    assert match_part("Both Paris and Lyon", refs) == 1.0
    assert match_part("Marseille", refs) == 0.0


def test_reward_classes_score_each_completion():
    completions = ["The special magic number for x is 1234567.", "It is 7654321", "abc"]
    refs = [["1234567"], ["1234567", "7654321"], ["A", "Z"]]
    assert StringMatchAll()(completions, refs, tasks=["t"] * 3) == [1.0, 0.5, 0.5]
    assert StringMatchPart()(completions, refs) == [1.0, 1.0, 1.0]


def test_reward_input_errors():
    with pytest.raises(ValueError, match="2 completions but 1 reference lists"):
        StringMatchAll()(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match=r"references\[0\] must be a non-empty list"):
        StringMatchAll()(["a"], [[]])
    with pytest.raises(ValueError, match=r"references\[0\] must be a non-empty list"):
        StringMatchPart()(["a"], ["abc"])
