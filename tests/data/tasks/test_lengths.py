"""Every task fits its prompt to the target length and hides every reference in the prompt."""

import time

import pytest

from longact_pl.data.haystack import EssayHaystack
from longact_pl.data.tasks.niah import NeedleInAHaystack
from longact_pl.data.tasks.qa import SyntheticQA
from longact_pl.data.tasks.variable_tracking import VariableTracking
from longact_pl.data.tasks.words import CommonWords, FrequentWords
from tests.data.helpers import n_tokens

TASKS = {
    "niah_multikey": lambda: NeedleInAHaystack(num_keys=4),
    "niah_essay_multivalue": lambda: NeedleInAHaystack(num_values=3, haystack=EssayHaystack()),
    "vt": lambda: VariableTracking(num_chains=2, num_hops=3),
    "cwe_small": lambda: CommonWords(num_common=5, common_repeats=6, uncommon_repeats=2),
    "fwe": lambda: FrequentWords(),
    "qa": lambda: SyntheticQA(),
}


@pytest.mark.parametrize("length", [256, 1024, 4096])
@pytest.mark.parametrize("name", sorted(TASKS))
def test_length_within_5_percent_and_references_present(tokenizer, name, length):
    sample = TASKS[name]().generate(length, seed=11, tokenizer=tokenizer)
    tokens = n_tokens(tokenizer, sample.prompt)
    assert abs(tokens - length) <= 0.05 * length, (name, tokens)
    assert sample.meta["num_tokens"] == tokens
    assert sample.meta["target_length"] == length
    assert sample.references
    for ref in sample.references:
        assert ref in sample.prompt


@pytest.mark.parametrize("name", sorted(TASKS))
def test_same_seed_same_sample_other_seed_differs(tokenizer, name):
    task = TASKS[name]()
    a = task.generate(512, seed=5, tokenizer=tokenizer)
    b = TASKS[name]().generate(512, seed=5, tokenizer=tokenizer)
    c = task.generate(512, seed=6, tokenizer=tokenizer)
    assert a == b
    assert a.prompt != c.prompt
    assert a.references != c.references


def test_cwe_ruler_defaults_fit_32k_quickly(tokenizer):

    start = time.perf_counter()
    sample = CommonWords().generate(32768, seed=0, tokenizer=tokenizer)
    assert time.perf_counter() - start < 3.0
    assert abs(n_tokens(tokenizer, sample.prompt) - 32768) <= 0.05 * 32768
    assert len(sample.references) == 10
