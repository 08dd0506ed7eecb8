"""LongBench v2: official templates, answer extraction, middle truncation, and loading errors."""

import json
import sys

import pytest

from longact_pl.eval.longbench import (
    TEMPLATE_0SHOT,
    TEMPLATE_COT_ANSWER,
    ChoiceMatch,
    build_prompt,
    extract_answer,
    fill,
)
from longact_pl.eval.longbench_data import FIELDS, load_longbench
from tests.eval.helpers import FIXTURE

ITEM = {
    "_id": "x1", "question": " Which? ", "choice_A": "alpha", "choice_B": "beta", "choice_C": "gamma",
    "choice_D": "delta", "answer": "C", "context": "  The document. It mentions $Q$ literally.  ",
}  # fmt: skip


@pytest.mark.parametrize(
    ("response", "want"),
    [
        ("The correct answer is (B)", "B"),
        ("Reasoning... The correct answer is C.", "C"),  # without parentheses
        ("**The correct answer is (D)**", "D"),  # markdown bold is stripped
        ("The correct answer is **(A)**", "A"),
        ("The correct answer is (A). Wait, The correct answer is (B)", "A"),  # two answers: the first wins
        ("The correct answer is C, no, The correct answer is (D)", "D"),  # the (X) form is tried first
        ("I think it is (B).", None),  # no format: no answer
        ("the correct answer is (B)", None),  # the official regex is case-sensitive
        ("The correct answer is (E)", None),
        ("", None),
    ],
)
def test_extract_answer(response, want):
    assert extract_answer(response) == want


def test_choice_match_counts_missing_answers_wrong():
    assert ChoiceMatch()(["The correct answer is (C)", "(C)", "The correct answer is B"], [["C"]] * 3) == [
        1,
        0,
        0,
    ]


def test_templates_are_the_official_text():
    text = fill(TEMPLATE_0SHOT, ITEM, ITEM["context"].strip())
    assert text == (
        "Please read the following text and answer the question below.\n\n<text>\n"
        "The document. It mentions $Q$ literally.\n</text>\n\n"
        "What is the correct answer to this question: Which?\nChoices:\n(A) alpha\n(B) beta\n(C) gamma\n"
        '(D) delta\n\nFormat your response as follows: "The correct answer is (insert answer here)".'
    )
    cot = fill(TEMPLATE_COT_ANSWER, ITEM, "doc", cot="my reasoning")
    assert cot.endswith(
        "(D) delta\n\nLet’s think step by step: my reasoning\n\nBased on the above, what is the single, "
        "most likely answer choice? Format your response as follows: "
        '"The correct answer is (insert answer here)".'
    )


def test_build_prompt_cuts_the_middle_of_the_context_only(tokenizer):
    words = [f"w{i}" for i in range(2000)]
    item = {**ITEM, "context": "START " + " ".join(words) + " END"}
    full, cut = build_prompt(tokenizer, TEMPLATE_0SHOT, item, 100_000)
    assert not cut
    ids, cut = build_prompt(tokenizer, TEMPLATE_0SHOT, item, 600)
    text = tokenizer.decode(ids)
    assert cut and len(ids) <= 600 and len(full) > 600
    assert "START w0 w1" in text and "w1999 END" in text and " w1000 " not in text
    assert "Which?" in text and "(D) delta" in text and text.count("Format your response") == 1
    with pytest.raises(ValueError, match="raise eval.max_input_tokens"):
        build_prompt(tokenizer, TEMPLATE_0SHOT, item, 50)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_fixture_loads_in_the_real_schema():
    rows = load_longbench(str(FIXTURE))
    assert len(rows) == 6 and all(tuple(r) == FIELDS for r in rows)
    assert {r["difficulty"] for r in rows} == {"easy", "hard"}
    assert {r["length"] for r in rows} == {"short", "medium", "long"}
    assert len(load_longbench(str(FIXTURE), limit=2)) == 2


def test_json_list_format_loads(tmp_path):
    rows = load_longbench(str(FIXTURE))
    path = tmp_path / "data.json"
    path.write_text(json.dumps(rows))
    assert load_longbench(str(path)) == rows


def test_bad_rows_name_file_row_and_field(tmp_path):
    good = load_longbench(str(FIXTURE))
    missing = [good[0], {k: v for k, v in good[1].items() if k != "choice_C"}]
    path = _write(tmp_path / "m.jsonl", missing)
    with pytest.raises(ValueError, match=r"m\.jsonl: line 2 \(_id=lb-0002\): field 'choice_C' is missing"):
        load_longbench(path)
    with pytest.raises(ValueError, match=r"line 1 .*field 'answer' is 'E'; it must be one of"):
        load_longbench(_write(tmp_path / "a.jsonl", [{**good[0], "answer": "E"}]))
    with pytest.raises(ValueError, match=r"field 'difficulty'"):
        load_longbench(_write(tmp_path / "d.jsonl", [{**good[0], "difficulty": "medium"}]))
    with pytest.raises(ValueError, match="repeats an earlier row"):
        load_longbench(_write(tmp_path / "r.jsonl", [good[0], good[0]]))
    (tmp_path / "broken.jsonl").write_text('{"_id": 1\n')
    with pytest.raises(ValueError, match=r"broken\.jsonl: line 1: not valid JSON"):
        load_longbench(str(tmp_path / "broken.jsonl"))


def test_missing_file_and_missing_datasets_package(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"nope\.json: no such file; .*eval.path="):
        load_longbench(str(tmp_path / "nope.json"))
    with pytest.raises(ValueError, match="eval.path is required"):
        load_longbench("???")
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(ImportError, match=r"needs the `datasets` package \(pip install datasets\)"):
        load_longbench("THUDM/LongBench-v2")
