import re
from collections import Counter

import pytest

from longact_pl.data.tasks.words import CommonWords, FrequentWords


def test_cwe_counts(tokenizer):
    sample = CommonWords(num_common=4, common_repeats=7, uncommon_repeats=2).generate(
        1024, seed=3, tokenizer=tokenizer
    )
    items = re.findall(r"(\d+)\. (\w+)", sample.prompt)
    assert [int(i) for i, _ in items] == list(range(1, len(items) + 1))
    counts = Counter(w for _, w in items)
    assert sorted(w for w, c in counts.items() if c == 7) == sorted(sample.references)
    assert len(sample.references) == 4
    assert set(counts.values()) == {7, 2}
    assert "What are the 4 most common words in the above list?" in sample.prompt


def test_cwe_rejects_bad_repeats():
    with pytest.raises(ValueError, match="common_repeats=3 must exceed uncommon_repeats=3"):
        CommonWords(common_repeats=3, uncommon_repeats=3)


def test_cwe_defaults_too_long_for_short_target(tokenizer):
    with pytest.raises(ValueError, match="too short"):
        CommonWords().generate(512, seed=0, tokenizer=tokenizer)


def test_fwe_counts_follow_zipf(tokenizer):
    task = FrequentWords(num_answers=3, vocab_size=50, alpha=2.0)
    # Rank k of 50 gets floor(N k^-2 / Z); Z = sum_{k<=50} k^-2 = 1.625133; N=100 -> 61, 15, 6, 3, 2.
    assert task.counts(100)[:5] == [61, 15, 6, 3, 2]
    sample = task.generate(1024, seed=2, tokenizer=tokenizer)
    context = sample.prompt.split("coded words. ", 1)[1].split("\nQuestion:")[0]
    counts = Counter(context.split())
    ranked = [w for w, _ in counts.most_common()]
    assert ranked[0] == "...."
    assert ranked[1:4] == sample.references
    assert counts[ranked[3]] > counts[ranked[4]]


def test_fwe_too_short_is_rejected(tokenizer):
    with pytest.raises(ValueError):
        FrequentWords().generate(80, seed=0, tokenizer=tokenizer)
