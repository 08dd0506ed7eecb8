import re

import pytest

from longact_pl.data.items import Numbers, Uuids, WordPairs
from longact_pl.data.tasks.niah import NeedleInAHaystack

NEEDLE = re.compile(r"One of the special magic (\w+) for (\S+) is: (\S+)\.")


def test_multikey_four_needles_ask_one(tokenizer):
    sample = NeedleInAHaystack(num_keys=4).generate(1024, seed=3, tokenizer=tokenizer)
    needles = NEEDLE.findall(sample.prompt)
    assert len(needles) == 4
    assert len({k for _, k, _ in needles}) == 4  # four different keys
    assert all(re.fullmatch(r"[a-z]+-[a-z]+", k) and re.fullmatch(r"[1-9]\d{6}", v) for _, k, v in needles)
    (query,) = sample.meta["queries"]
    assert sample.references == [v for _, k, v in needles if k == query]
    assert sample.prompt.endswith(
        f"What is the special magic number for {query} mentioned in the provided text?"
    )
    assert (
        sample.meta["answer_prefix"]
        == f"The special magic number for {query} mentioned in the provided text is"
    )
    assert sample.task == "niah_multikey"


def test_multivalue_asks_all_values_of_one_key(tokenizer):
    sample = NeedleInAHaystack(num_values=3).generate(512, seed=1, tokenizer=tokenizer)
    needles = NEEDLE.findall(sample.prompt)
    assert len(needles) == 3 and len({k for _, k, _ in needles}) == 1
    assert sorted(sample.references) == sorted(v for _, _, v in needles)
    assert "What are all the special magic numbers for" in sample.prompt
    assert sample.task == "niah_multivalue"


def test_multiquery_asks_several_keys(tokenizer):
    sample = NeedleInAHaystack(num_keys=4, num_queries=2).generate(512, seed=2, tokenizer=tokenizer)
    needles = dict((k, v) for _, k, v in NEEDLE.findall(sample.prompt))
    q1, q2 = sample.meta["queries"]
    assert sample.references == [needles[q1], needles[q2]]
    assert f"for {q1} and {q2} mentioned" in sample.prompt
    assert sample.task == "niah_multiquery"


def test_single_with_uuid_values_and_number_keys(tokenizer):
    task = NeedleInAHaystack(keys=Numbers(5), values=Uuids())
    sample = task.generate(300, seed=0, tokenizer=tokenizer)
    ((kind, key, value),) = NEEDLE.findall(sample.prompt)
    assert kind == "uuids" and re.fullmatch(r"\d{5}", key)
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", value)
    assert sample.references == [value] and sample.task == "niah_single"


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.9])
def test_fixed_depth_is_honoured(tokenizer, depth):
    sample = NeedleInAHaystack(depth=depth).generate(2048, seed=4, tokenizer=tokenizer)
    start = sample.prompt.index("afterwards.\n") + len("afterwards.\n")
    end = sample.prompt.index("\nWhat is the special")
    context = sample.prompt[start:end]
    position = context.index("One of the special magic") / len(context)
    assert abs(position - depth) < 0.03
    assert sample.meta["depths"] == [depth]


def test_depth_list_places_each_needle(tokenizer):
    sample = NeedleInAHaystack(num_keys=2, depth=[0.8, 0.2]).generate(2048, seed=4, tokenizer=tokenizer)
    starts = [m.start() / len(sample.prompt) for m in NEEDLE.finditer(sample.prompt)]
    assert sample.meta["depths"] == [0.2, 0.8]
    assert abs(starts[0] - 0.2) < 0.05 and abs(starts[1] - 0.8) < 0.05


def test_random_depth_depends_on_seed(tokenizer):
    task = NeedleInAHaystack()
    depths = {task.generate(256, seed=s, tokenizer=tokenizer).meta["depths"][0] for s in range(5)}
    assert len(depths) == 5 and all(0.0 <= d <= 1.0 for d in depths)


def test_word_pairs_are_adjective_noun():
    import random

    key = WordPairs().make(random.Random(0))
    assert re.fullmatch(r"[a-z]+-[a-z]+", key)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="num_queries=3 exceeds num_keys=2"):
        NeedleInAHaystack(num_keys=2, num_queries=3)
    with pytest.raises(ValueError, match="depth lists 1 fractions but there are 4 needles"):
        NeedleInAHaystack(num_keys=4, depth=[0.5])
    with pytest.raises(ValueError, match="outside"):
        NeedleInAHaystack(depth=1.5)


def test_too_short_target_names_the_fix(tokenizer):
    with pytest.raises(ValueError, match="too short"):
        NeedleInAHaystack(num_keys=8).generate(64, seed=0, tokenizer=tokenizer)
