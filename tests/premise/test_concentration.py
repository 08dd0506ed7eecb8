"""Concentration by length: the same items at every length, question and context tokens apart."""

import pytest
import torch

from longact_pl.masking.mask_metrics import top_share
from longact_pl.masking.targets import find_targets
from longact_pl.models.tiny import tiny_llama
from longact_pl.premise.concentration import collect_split, concentration_table, niah_prompts


@pytest.fixture(scope="module")
def tiny():
    loaded = tiny_llama(seed=0)
    return loaded.model, loaded.tokenizer, find_targets(loaded.model, ("q_proj", "k_proj"))


def test_same_items_at_every_length_split_at_the_question(tiny):
    _, tok, _ = tiny
    prompts = niah_prompts(tok, [256, 512], samples=2, seed=3)
    for short, long in zip(prompts[256], prompts[512]):
        q_short = tok.decode(short.ids[short.question_start :])
        assert q_short.lstrip().startswith("What is the special magic number for")
        assert tok.decode(long.ids[long.question_start :]) == q_short  # the same question (and item)
        assert len(long.ids) > len(short.ids) + 150


def test_context_and_question_stats_add_up_to_all_tokens(tiny):
    model, tok, targets = tiny
    prompts = niah_prompts(tok, [256], samples=2, seed=0)[256]
    split = collect_split(model, targets, prompts)
    for t in targets:
        a, c, q = (split[k][t.name] for k in ("all", "context", "question"))
        assert a.count == c.count + q.count == sum(len(p.ids) for p in prompts)
        assert q.count == sum(len(p.ids) - p.question_start for p in prompts)
        torch.testing.assert_close(a.sum_abs, c.sum_abs + q.sum_abs)
    rows = concentration_table({256: split}, targets, 0.3)
    assert [r["group"] for r in rows] == ["q_proj", "k_proj"]
    q_names = [t.name for t in targets if t.group == "q_proj"]
    assert rows[0]["layer0"] == top_share(split["all"][q_names[0]].statistic("mean_abs"), 0.3)
    assert rows[0]["question"] == top_share(
        split["question"][q_names[1]].statistic("mean_abs"), 0.3
    )  # 2 layers
