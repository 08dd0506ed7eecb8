"""RULER string-match scoring (x100) on hand-written predictions, and the shared evaluate_batch path."""

import pytest
import torch

from longact_pl.eval.batch_scoring import evaluate_batch, string_match_all, string_match_part
from longact_pl.rewards.string_match import StringMatchAll
from longact_pl.rollout.hf import HFRollout
from tests.conftest import chat_ids
from tests.eval.helpers import OddLength


def test_string_match_all_full_partial_none_case_and_control_chars():
    refs = [["1234567", "7654321"]]
    assert string_match_all(["1234567 and 7654321"], refs) == 100.0  # full
    assert string_match_all(["only 7654321"], refs) == 50.0  # partial
    assert string_match_all(["nothing"], refs) == 0.0  # none
    assert string_match_all(["QUIET-Harbor"], [["quiet-harbor"]]) == 100.0  # case-insensitive
    assert string_match_all(["\x00\x07 1234567\t7654321 \n"], refs) == 100.0  # control chars around
    assert string_match_all(["12345\x0067 7654321"], refs) == 50.0  # a control char inside breaks a value
    # the mean over predictions: (1 + 0.5 + 0) / 3
    assert string_match_all(["1234567 7654321", "1234567", "x"], refs * 3) == pytest.approx(50.0)


def test_string_match_part_any_reference_counts_once():
    refs = [["Paris", "Lyon"]]
    assert string_match_part(["I think LYON."], refs) == 100.0
    assert string_match_part(["paris or lyon"], refs) == 100.0  # not 200
    assert string_match_part(["Marseille"], refs) == 0.0
    assert string_match_part(["par\x01is"], refs) == 0.0
    assert string_match_part(["Lyon", "Nice", "paris", "x"], refs * 4) == 50.0


def test_scoring_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="one non-empty reference list per prediction"):
        string_match_all(["a", "b"], [["a"]])
    with pytest.raises(ValueError):
        string_match_part([], [])


def test_evaluate_batch_scores_completions_with_the_task_reward(tiny):
    records = [
        {"prompt_ids": chat_ids(tiny.tokenizer, t), "references": [r], "task": "x"}
        for t, r in (("Say hello.", "hello"), ("Count to three.", "three"))
    ]
    engine = HFRollout(group_size=2, max_new_tokens=6)
    res = evaluate_batch(engine, tiny.model, tiny.tokenizer, records, OddLength(), max_new_tokens=5)
    assert res.group_size == 1 and len(res.completions) == 2
    assert res.scores.tolist() == [float(len(c) % 2) for c in res.completions]
    assert bool((res.completion_lengths <= 5).all())
    # greedy is deterministic; the same records give the same scores under another scorer's view
    again = evaluate_batch(engine, tiny.model, tiny.tokenizer, records, StringMatchAll(), max_new_tokens=5)
    assert again.completions == res.completions
    sampled = evaluate_batch(engine, tiny.model, tiny.tokenizer, records, OddLength(), 5, False, seed=3)
    assert sampled.group_size == 2 and len(sampled.completions) == 4
    assert sampled.scores.shape == torch.Size([4])
    assert [sampled.prompt_index(i) for i in range(4)] == [0, 0, 1, 1]
