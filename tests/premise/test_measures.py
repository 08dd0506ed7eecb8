"""Premise measures on hand-made gradients: known shares, gains and updates worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from longact_pl.premise.measures import Direction, cosine, masked_step, row_sq, share

# 3 rows x 2 columns; row squared norms 25, 1, 4 (total 30)
G = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, -2.0]])  # [R=3, in=2]


def test_share_known_answers():
    rows = row_sq(G)  # [3]
    assert rows.tolist() == [25.0, 1.0, 4.0]
    every = torch.ones(3, dtype=torch.bool)
    first = torch.tensor([True, False, False])
    assert share(rows, every) == 1.0
    assert share(rows, first) == pytest.approx(25 / 30)
    assert share(rows, ~first) == pytest.approx(1 - 25 / 30)  # the complement
    assert share(rows, torch.zeros(3, dtype=torch.bool)) == 0.0
    assert share(torch.zeros(3), every) == 0.0  # a zero gradient has no share anywhere


def test_gains_by_hand():
    d = Direction(G)
    g = torch.tensor([[1.0, 1.0], [2.0, 5.0], [1.0, 1.0]])  # held-out gradient [3, 2]
    masks = {"first": torch.tensor([True, False, False]), "last2": torch.tensor([False, True, True])}
    out = d.gains(g, masks)
    # unit: <g, m*G> / ||m*G||; first: (3+4)/5; last2: (2 + 0 + 0 - 2) / sqrt(1 + 4) = 0
    assert out["unit"]["first"] == pytest.approx(7 / 5)
    assert out["unit"]["last2"] == pytest.approx(0.0)
    # sign: <g, m*sign(G)> / sqrt(#nonzero kept entries); first: (1+1)/sqrt(2); last2: (2 - 1)/sqrt(2)
    assert out["sign"]["first"] == pytest.approx(2 / math.sqrt(2))
    assert out["sign"]["last2"] == pytest.approx(1 / math.sqrt(2))


def test_zero_update_has_zero_gain_and_zero_step():
    d = Direction(torch.zeros(3, 2))
    g = torch.randn(3, 2)
    every = {"all": torch.ones(3, dtype=torch.bool)}
    assert d.gains(g, every) == {"unit": {"all": 0.0}, "sign": {"all": 0.0}}
    for norm in ("unit", "sign"):
        assert torch.equal(d.step(every["all"], norm, 1.0), torch.zeros(3, 2))
    # an empty mask moves nothing either
    empty = {"none": torch.zeros(3, dtype=torch.bool)}
    assert Direction(G).gains(g, empty) == {"unit": {"none": 0.0}, "sign": {"none": 0.0}}


def test_masked_step_by_hand():
    keep = torch.tensor([True, False, True])
    sign = masked_step(G, keep, "sign", 0.5)
    assert sign.tolist() == [[-0.5, -0.5], [0.0, 0.0], [0.0, 0.5]]
    unit = masked_step(G, keep, "unit", 2.0)  # -2 * [[3,4],[0,0],[0,-2]] / sqrt(29)
    assert unit.norm().item() == pytest.approx(2.0)
    assert unit[0].tolist() == pytest.approx([-6 / math.sqrt(29), -8 / math.sqrt(29)])
    with pytest.raises(ValueError, match="normalisation"):
        masked_step(G, keep, "adam", 1.0)


def test_cosine():
    assert cosine(G, 2 * G) == pytest.approx(1.0)
    assert cosine(G, -G) == pytest.approx(-1.0)
    assert cosine(G, torch.zeros_like(G)) == 0.0
