import pytest
import torch

from longact_pl.guards import (
    NonFiniteError,
    NonFiniteGuard,
    RewardFunctionError,
    SafetyStops,
    SkippedStepsError,
    StreakGuard,
)
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
    with pytest.raises(ValueError, match="module.guards.max_nonfinite_steps"):
        NonFiniteGuard(0)


def test_streak_guard_counts_bad_steps_in_a_row_and_restores():
    guard = StreakGuard(2, "module.guards.max_skipped_steps")
    assert guard.record(True) and not guard.exhausted
    assert not guard.record(False) and guard.consecutive == 0  # a good step resets the streak
    guard.record(True)
    guard.record(True)
    assert guard.exhausted and guard.state_dict() == {"consecutive": 2, "total": 3}
    again = StreakGuard(2, "module.guards.max_skipped_steps")
    again.load_state_dict(guard.state_dict())
    assert again.exhausted
    with pytest.raises(ValueError, match="module.guards.max_reward_failure_steps must be >= 1"):
        StreakGuard(0, "module.guards.max_reward_failure_steps")


def test_streak_guard_counts_a_step_only_when_it_was_bad_on_every_rank():
    guard = StreakGuard(2, "module.guards.max_reward_failure_steps")
    ranks = FakeOps(world_size=2, other_mins=[0, 1, 1])  # the other rank: fine, then bad twice
    assert not guard.record(True, ranks) and guard.consecutive == 0
    assert guard.record(True, ranks) and not guard.exhausted
    assert guard.record(True, ranks) and guard.exhausted  # both ranks reach the limit at the same step
    assert ranks.min_calls == [1, 1, 1]


def test_safety_stops_save_then_raise_and_restore_their_counters(tmp_path):
    saved = []

    def save(name):
        saved.append(name)
        return tmp_path / name

    stops = SafetyStops(
        max_nonfinite_steps=2, max_skipped_steps=1, max_reward_failure_steps=2, max_gen_rounds=4
    )
    assert not stops.nonfinite.allow(float("nan"), torch.tensor(1.0))
    stops.on_nonfinite_step(save)  # one in a row: warned, not stopped
    assert saved == []
    assert not stops.nonfinite.allow(1.0, torch.tensor(float("inf")))
    with pytest.raises(NonFiniteError, match="2 optimizer steps in a row"):
        stops.on_nonfinite_step(save)
    assert stops.skipped.record(True)
    with pytest.raises(SkippedStepsError, match="algo.max_gen_rounds=4"):
        stops.on_skipped_step(save, "step 3/10")
    first, later = (("first", ValueError("a")), ("later", ValueError("b")))
    stops.check_rewards(True, first, FakeOps(world_size=1), save)
    with pytest.raises(RewardFunctionError, match="First error: first") as err:
        stops.check_rewards(True, later, FakeOps(world_size=1), save)  # the streak's first error is reported
    assert err.value.__cause__ is first[1]
    assert saved == ["nonfinite.ckpt", "skipped.ckpt", "reward_errors.ckpt"]
    state = stops.state_dict()
    assert state == {"guard_consecutive": 2, "guard_total": 2, "skipped_consecutive": 1, "skipped_total": 1,
                     "reward_failed_consecutive": 2, "reward_failed_total": 2, "masked_out_consecutive": 0,
                     "masked_out_total": 0}  # fmt: skip
    resumed = SafetyStops()
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    resumed.load_state_dict({})  # a checkpoint from before the counters: all 0
    assert set(resumed.state_dict().values()) == {0}
