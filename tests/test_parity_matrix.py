"""The parity matrix (tests/parity.py): its design covers every pair of settings, its comparison catches
each kind of mismatch, and every configuration trains like its one-process, padded, whole-group reference.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tests.parity import (
    FACTORS,
    GRAD_RTOL,
    LAYOUT,
    RunResult,
    compare,
    covering_design,
    label,
    reference_of,
    run_matrix,
    table,
    uncovered_pairs,
    world_size,
)


def test_design_covers_every_pair_of_settings():
    design = covering_design()
    assert len(design) == 6 and len(set(design)) == 6
    assert uncovered_pairs(design) == []
    for (a, fa), (b, fb) in itertools.combinations(enumerate(FACTORS), 2):  # spelled out once more
        for la, lb in itertools.product((0, 1), repeat=2):
            assert any(r[a] == la and r[b] == lb for r in design), (fa.name, la, fb.name, lb)
    # every row changes the layout somewhere, so it is compared with a run other than itself
    assert all(any(r[i] for i in LAYOUT) and reference_of(r) != r for r in design)
    assert max(world_size(r) for r in design) == 4  # data-parallel 2 x sequence-parallel 2 is in it
    # dropping any row loses a pair: the design is no bigger than it needs to be
    assert all(uncovered_pairs(design[:i] + design[i + 1 :]) for i in range(len(design)))


def _result(scale: float = 1.0, flip: bool = False, metric: float = 0.5, tokens_per_s: float = 100.0):
    torch.manual_seed(0)
    grads = [{"w": torch.randn(5, 3), "b": torch.randn(3)} for _ in range(2)]
    grads[1]["w"] = grads[1]["w"] * scale
    masks = [{"q": torch.tensor([1, 0, 1], dtype=torch.uint8)} for _ in range(2)]
    if flip:
        masks[1]["q"] = torch.tensor([1, 1, 0], dtype=torch.uint8)
    metrics = [{"train/reward_mean": 0.5, "train/tokens_per_s": tokens_per_s}, {"train/reward_mean": metric}]
    return RunResult(grads, masks, metrics, None, 1.0)


def test_comparison_flags_each_kind_of_mismatch():
    row = covering_design()[0]
    want = _result()
    same = compare(row, _result(tokens_per_s=50.0), want)  # a timing metric may differ
    assert same.passed and same.grad_errors == (0.0, 0.0)
    grads = compare(row, _result(scale=1 + 1e-3), want)  # one tensor of step 2 off by 1e-3 relative
    assert not grads.passed and grads.grad_errors[0] == 0 and grads.grad_errors[1] > GRAD_RTOL[1]
    assert not compare(row, _result(flip=True), want).passed
    metrics = compare(row, _result(metric=0.5001), want)
    assert not metrics.passed and metrics.metric_mismatches == ["step2:train/reward_mean 0.5001 vs 0.5"]
    failed = compare(row, RunResult([], [], [], "ValueError: refused", 1.0), want)
    assert not failed.passed and math.isinf(failed.grad_errors[0])
    zero = _result()
    zero.grads[1] = {k: torch.zeros_like(v) for k, v in zero.grads[1].items()}  # nothing trained at step 2
    assert compare(row, zero, zero).error == "reference gradient is zero"
    assert "FAIL" in table([failed]) and "PASS" in table([same])


@pytest.mark.slow
def test_every_configuration_trains_like_one_padded_process(tmp_path):
    """6 configurations (13 ranks) and their 5 references through train.py, 2 optimizer steps each, fp32."""
    verdicts = run_matrix(tmp_path, covering_design(), log=lambda message: None)
    failed = [label(v.row) for v in verdicts if not v.passed]
    assert not failed, "\n" + table(verdicts)
