"""DocQA rows: schema errors name file:line:field; prompts keep question and instructions, cut the middle."""

from __future__ import annotations

import json

import pytest

from longact_pl.data.dataset import PromptDataset
from longact_pl.data.docqa import QWENLONG_L1, DocQASource, fill, resolve_template
from tests.data.docqa_fixture import write_docqa


def test_rows_become_samples_with_meta(tmp_path):
    source = DocQASource(str(write_docqa(tmp_path / "d.jsonl")))
    assert len(source) == 4 and [s.task for s in source.samples] == ["synth_a", "synth_b"] * 2
    chunked = source[1]
    assert chunked.meta["chunk_ids"][0] == "c0" and chunked.meta["evidence"] == ["c0"]
    assert chunked.meta["context"].startswith("[c0] The code of item")
    assert source[0].prompt.startswith("Please read the following text") and "Therefore, the answer is" in (
        source[0].prompt
    )


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"context": "d", "answers": ["a"]}, "question"),
        ({"context": "d", "question": "q", "answers": []}, "answers"),
        ({"question": "q", "answers": ["a"]}, "context"),
        ({"question": "q", "answers": ["a"], "chunks": [{"id": "c1"}]}, "chunks[0]"),
        (
            {"question": "q", "answers": ["a"], "chunks": [{"id": "c1", "text": "t"}], "evidence": ["c2"]},
            "evidence",
        ),
        ({"context": "d", "question": "q", "answers": ["a"], "source": 3}, "source"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, row, field):
    path = tmp_path / "bad.jsonl"
    good = {"context": "doc", "question": "q?", "answers": ["a"]}
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(
        ValueError, match=rf"bad.jsonl:3: field '{field}'".replace("[", r"\[").replace("]", r"\]")
    ):
        DocQASource(str(path))


def test_template_presets_and_errors():
    assert resolve_template("qwenlong_l1") == QWENLONG_L1
    with pytest.raises(ValueError, match=r"\$DOC\$"):
        resolve_template("no slots")
    assert fill("$DOC$ / $Q$", "a $Q$ b", " why? ") == "a $Q$ b / why?"  # one pass: the document's $Q$ stays


def test_over_long_document_loses_its_middle_only(tmp_path, tiny):
    source = DocQASource(str(write_docqa(tmp_path / "d.jsonl", rows=2, sentences=40, long_every=0)))
    tok = tiny.tokenizer
    data = PromptDataset(source, tok, max_prompt_tokens=300)
    record = data[0]
    text = tok.decode(record["prompt_ids"])
    doc = source[0].meta["context"]
    assert record["truncated"] and len(record["prompt_ids"]) <= 300
    assert source[0].meta["question"] in text and "Format your response as follows" in text
    assert doc[:40] in text and doc[-40:] in text and doc[len(doc) // 2 : len(doc) // 2 + 40] not in text
    assert record["question"] == source[0].meta["question"]  # handed to the judge
    full = PromptDataset(source, tok, max_prompt_tokens=None)[0]
    assert not full["truncated"] and len(full["prompt_ids"]) > 300


def test_a_tight_budget_still_keeps_a_long_question_whole(tmp_path, tiny):
    question = "Considering every item listed in the text above, " * 8 + "what is the code of item amber-0?"
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"context": " ".join(["The code of item birch-1 is 1037."] * 60),
                                "question": question, "answers": ["1000"]}) + "\n")  # fmt: skip
    record = PromptDataset(DocQASource(str(path)), tiny.tokenizer, max_prompt_tokens=180)[0]
    text = tiny.tokenizer.decode(record["prompt_ids"])
    assert record["truncated"] and len(record["prompt_ids"]) <= 180
    assert question in text and "Please read the following text" in text and "the answer is (insert" in text
