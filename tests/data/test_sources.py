import json

import pytest

from longact_pl.data.sources import GeneratedSource, JsonlSource, check_disjoint, derive_seed
from longact_pl.data.tasks.niah import NeedleInAHaystack
from tests.data.helpers import n_tokens


def test_generated_source_cycles_lengths_and_is_reproducible(tokenizer):
    src = GeneratedSource(NeedleInAHaystack(), num_samples=5, lengths=[256, 512], seed=1, tokenizer=tokenizer)
    assert len(src) == 5
    assert [src[i].meta["target_length"] for i in range(5)] == [256, 512, 256, 512, 256]
    assert src[3].meta["seed"] == derive_seed(1, 3)
    assert abs(n_tokens(tokenizer, src[1].prompt) - 512) <= 0.05 * 512
    assert src[2] == src[2]
    assert src[0].prompt != src[2].prompt
    with pytest.raises(IndexError):
        src[5]


def test_generated_source_needs_a_tokenizer():
    src = GeneratedSource(NeedleInAHaystack(), num_samples=1, lengths=[256], seed=0)
    with pytest.raises(RuntimeError, match="set_tokenizer"):
        src[0]


def test_derive_seed_is_fixed():
    # Stable across runs (hash-based, not Python's salted hash()).
    assert derive_seed(0, 0) == derive_seed(0, 0)
    assert len({derive_seed(s, i) for s in range(3) for i in range(100)}) == 300


def test_train_and_val_are_disjoint(tokenizer):
    task = NeedleInAHaystack(num_keys=4)
    train = GeneratedSource(task, num_samples=40, lengths=[256], seed=42, tokenizer=tokenizer)
    val = GeneratedSource(task, num_samples=12, lengths=[256], seed=1234, tokenizer=tokenizer)
    check_disjoint(train, val)
    same = GeneratedSource(task, num_samples=12, lengths=[256], seed=42, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="item 0 of the second source repeats item 0"):
        check_disjoint(train, same)


def write(tmp_path, lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_good_file(tmp_path):
    path = write(
        tmp_path,
        [
            json.dumps({"prompt": "What is 2+2?", "answer": "4", "target_length": 100}),
            "",
            json.dumps(
                {"messages": [{"role": "user", "content": "Hi"}], "answer": ["a", "b"], "task": "chat"}
            ),
        ],
    )
    src = JsonlSource(str(path))
    assert len(src) == 2
    assert src[0].prompt == "What is 2+2?" and src[0].references == ["4"] and src[0].task == "data"
    assert src[0].meta["target_length"] == 100 and src[0].meta["line"] == 1
    assert src[1].prompt == [{"role": "user", "content": "Hi"}]
    assert src[1].references == ["a", "b"] and src[1].task == "chat" and src[1].meta["line"] == 3


def test_jsonl_custom_field_names(tmp_path):
    path = write(tmp_path, [json.dumps({"q": "x?", "a": "y"})])
    src = JsonlSource(str(path), prompt_field="q", answer_field="a")
    assert src[0].prompt == "x?" and src[0].references == ["y"]


@pytest.mark.parametrize(
    ("bad_line", "field"),
    [
        ('{"prompt": "x", "answer": ', "<json>"),
        ('{"prompt": "x"}', "answer"),
        ('{"prompt": "x", "answer": 5}', "answer"),
        ('{"prompt": "x", "answer": []}', "answer"),
        ('{"prompt": 3, "answer": "y"}', "prompt"),
        ('{"answer": "y"}', "prompt/messages"),
        ('{"messages": [{"role": "robot", "content": "x"}], "answer": "y"}', "messages[0]"),
        ("[1, 2]", "<json>"),
    ],
)
def test_jsonl_malformed_line_names_file_line_and_field(tmp_path, bad_line, field):
    path = write(tmp_path, [json.dumps({"prompt": "ok", "answer": "ok"}), bad_line], name="bad_set.jsonl")
    with pytest.raises(ValueError) as err:
        JsonlSource(str(path))
    text = str(err.value)
    assert "bad_set.jsonl:2:" in text
    assert f"field {field!r}" in text


def test_jsonl_missing_or_empty_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl does not exist"):
        JsonlSource(str(tmp_path / "nope.jsonl"))
    with pytest.raises(ValueError, match="no samples"):
        JsonlSource(str(write(tmp_path, [""])))


def test_jsonl_non_utf8_bytes_name_file_and_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    good = json.dumps({"prompt": "ok", "answer": "ok"}).encode()
    path.write_bytes(good + b"\n" + '{"prompt": "caf\u00e9", "answer": "x"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.jsonl:2: field '<encoding>': byte 0xe9 .* is not UTF-8"):
        JsonlSource(str(path))


def test_jsonl_accepts_a_utf8_byte_order_mark(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "caf\u00e9?", "answer": "y"}).encode() + b"\n")
    assert JsonlSource(str(path))[0].prompt == "caf\u00e9?"
