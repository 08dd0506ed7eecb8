"""QA rewards against values worked out by hand."""

from __future__ import annotations

import pytest

from longact_pl.rewards.answers import extract_answer, normalize_answer
from longact_pl.rewards.choice import MultipleChoice
from longact_pl.rewards.citation import CitationFBeta
from longact_pl.rewards.combine import MaxOf
from longact_pl.rewards.math_equiv import MathEquivalence
from longact_pl.rewards.qa_match import ExactMatch, SubstringMatch, TokenF1


def test_normalize_and_extract():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert (
        extract_answer("<think>the answer is 3</think>So... Therefore, the answer is **Paris**.") == "Paris"
    )
    assert extract_answer("x \\boxed{\\frac{1}{2}} then the answer is 7") == "\\frac{1}{2}"
    assert extract_answer("Therefore, the answer is (B).") == "B"
    assert extract_answer("no final answer here") is None


def test_exact_and_substring_match():
    completions = [
        "Therefore, the answer is The Paris.",
        "the answer is Paris France",
        "Paris",
        "the answer is",
    ]
    refs = [["paris"], ["Paris"], ["Paris"], ["Paris"]]
    assert ExactMatch()(completions, refs) == [1.0, 0.0, 0.0, 0.0]  # 3rd: no final answer, 4th: empty
    assert SubstringMatch()(completions, refs) == [1.0, 1.0, 0.0, 0.0]
    assert SubstringMatch(extract=False)(completions[2:3], refs[2:3]) == [1.0]
    # the max over references
    assert ExactMatch()(["the answer is Lyon"], [["Paris", "lyon"]]) == [1.0]


def test_token_f1_by_hand():
    # prediction "red big apple" vs "big red car": common {red, big} = 2; P = 2/3, R = 2/3, F1 = 2/3
    f1 = TokenF1()(["the answer is red big apple"], [["big red car"]])[0]
    assert f1 == pytest.approx(2 / 3)
    # "a big car" -> "big car" (article dropped): common 2, P = 1, R = 2/3 -> F1 = 0.8; F1 > 0.5 -> 1.0
    assert TokenF1()(["the answer is a big car"], [["big red car"]]) == [pytest.approx(0.8)]
    assert TokenF1(threshold=0.5)(
        ["the answer is a big car", "the answer is car"], [["big red car"]] * 2
    ) == [
        1.0,
        0.0,  # "car": P = 1, R = 1/3, F1 = 0.5, not > 0.5
    ]
    assert TokenF1()(["the answer is yes"], [["yes it is"]]) == [0.0]  # yes/no must match exactly


def test_math_equivalence():
    reward = MathEquivalence()
    completions = ["the answer is 12.50", "the answer is \\frac{1}{2}", "the answer is 13", "no answer"]
    assert reward(completions, [["12.5"], ["0.5"], ["12.5"], ["12.5"]]) == [1.0, 1.0, 0.0, 0.0]


def test_multiple_choice():
    reward = MultipleChoice()
    completions = ["The correct answer is (C)", "the answer is B.", "(A) because", "the answer is E"]
    assert reward(completions, [["C"], ["C"], ["A"], ["E"]]) == [1.0, 0.0, 1.0, 0.0]  # E is no option


def test_citation_f_beta_by_hand():
    reward = CitationFBeta(beta=2.0)
    # cited {c1, c3} (c9 is no chunk of the prompt), gold {c1, c2}: P = 1/2, R = 1/2 -> F2 = 0.5
    # cited {c1}, gold {c1, c2}: P = 1, R = 1/2 -> F2 = 5 * 0.5 / (4 + 0.5) = 5/9
    out = reward(
        ["see [c1] and [c3, c9]", "from [c1]", "no citation", "[c1]"],
        [["x"]] * 4,
        chunk_ids=[["c1", "c2", "c3"]] * 4,
        evidence=[["c1", "c2"], ["c1", "c2"], ["c1"], []],
    )
    assert out == [pytest.approx(0.5), pytest.approx(5 / 9), 0.0, 0.0]


def test_max_of():
    reward = MaxOf([SubstringMatch(), TokenF1(threshold=0.5)])
    assert reward(["the answer is big red", "the answer is blue"], [["big red car"]] * 2) == [1.0, 0.0]
