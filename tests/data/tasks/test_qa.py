import re

import pytest

from longact_pl.data.tasks.qa import SyntheticQA


def test_gold_document_answers_the_question(tokenizer):
    for seed in range(5):
        sample = SyntheticQA().generate(1024, seed=seed, tokenizer=tokenizer)
        town = sample.meta["town"]
        assert f"the town of {town}" in sample.prompt.rsplit("Question:", 1)[1]
        docs = re.split(r"\n\nDocument \d+:\n", "\n\n" + sample.prompt.split("documents.\n\n", 1)[1])
        about = [d for d in docs if d.startswith(f"{town} is a small town")]
        assert len(about) == 1  # exactly one document describes the asked town
        (ref,) = sample.references
        assert ref in about[0]
        numbers = [int(n) for n in re.findall(r"Document (\d+):", sample.prompt)]
        assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) > 5
        assert sample.meta["answer_prefix"] == "Answer:"


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_gold_depth(tokenizer, depth):
    sample = SyntheticQA(depth=depth).generate(2048, seed=1, tokenizer=tokenizer)
    town = sample.meta["town"]
    position = sample.prompt.index(f"{town} is a small town") / len(sample.prompt)
    assert abs(position - depth) < 0.08
