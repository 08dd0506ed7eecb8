import pytest
import torch

from longact_pl.guards import NonFiniteGuard, StreakGuard
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


def test_streak_guard_counts_bad_steps_in_a_row_and_restores():
    guard = StreakGuard(2, "module.max_skipped_steps")
    assert guard.record(True) and not guard.exhausted
    assert not guard.record(False) and guard.consecutive == 0  # a good step resets the streak
    guard.record(True)
    guard.record(True)
    assert guard.exhausted and guard.state_dict() == {"consecutive": 2, "total": 3}
    again = StreakGuard(2, "module.max_skipped_steps")
    again.load_state_dict(guard.state_dict())
    assert again.exhausted
    with pytest.raises(ValueError, match="module.max_reward_failure_steps must be >= 1"):
        StreakGuard(0, "module.max_reward_failure_steps")


def test_streak_guard_counts_a_step_only_when_it_was_bad_on_every_rank():
    guard = StreakGuard(2, "module.max_reward_failure_steps")
    ranks = FakeOps(world_size=2, other_mins=[0, 1, 1])  # the other rank: fine, then bad twice
    assert not guard.record(True, ranks) and guard.consecutive == 0
    assert guard.record(True, ranks) and not guard.exhausted
    assert guard.record(True, ranks) and guard.exhausted  # both ranks reach the limit at the same step
    assert ranks.min_calls == [1, 1, 1]
