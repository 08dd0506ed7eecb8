import pytest
import torch

from longact_pl.guards import NonFiniteGuard
from tests.helpers import FakeOps


def test_guard_skips_nonfinite_and_counts_streaks():
    guard = NonFiniteGuard(max_consecutive=2)
    assert guard.allow(1.0, torch.tensor(3.0))
    assert not guard.allow(float("nan"), torch.tensor(3.0)) and not guard.exhausted
    assert guard.allow(1.0, torch.tensor(1.0)) and guard.consecutive == 0  # a good step resets the streak
    assert not guard.allow(1.0, torch.tensor(float("inf")))
    assert not guard.allow(1.0, torch.tensor(float("nan"))) and guard.exhausted
    assert guard.state_dict() == {"consecutive": 2, "total": 3}


def test_guard_skips_on_every_rank_when_one_rank_is_not_finite():
    guard = NonFiniteGuard(max_consecutive=3)
    all_ranks = FakeOps(world_size=2, other_mins=[1, 0])  # this rank and a scripted other one

    assert guard.allow(1.0, torch.tensor(3.0), all_ranks)
    assert not guard.allow(1.0, torch.tensor(3.0), all_ranks)  # finite here, not on the other rank
    assert all_ranks.min_calls == [1, 1] and guard.state_dict() == {"consecutive": 1, "total": 1}


def test_grad_norm_is_global_l2():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    assert NonFiniteGuard.grad_norm([a, b]).item() == pytest.approx(5.0)  # sqrt(9 + 16)
    assert NonFiniteGuard.grad_norm([torch.nn.Parameter(torch.zeros(1))]).item() == 0.0


def test_guard_rejects_bad_setting():
    with pytest.raises(ValueError, match="module.max_nonfinite_steps"):
        NonFiniteGuard(0)
