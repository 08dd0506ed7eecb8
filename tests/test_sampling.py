import pytest
import torch

from longact_pl.rewards.scoring import RewardErrors, score
from tests.helpers import FakeOps


def _reward(completions, references, **meta):
    if any("boom" in c for c in completions):
        raise KeyError("boom")
    return [float(r[0] in c) for c, r in zip(completions, references)]


def test_score_repeats_references_per_group():
    samples = [{"references": ["7"], "task": "a"}, {"references": ["9"], "task": "b"}]
    got = score(_reward, ["7", "x", "9", "9"], samples, group_size=2)
    assert got.tolist() == [1.0, 0.0, 1.0, 1.0] and got.dtype == torch.float32


def test_raising_reward_scores_zero_counts_and_keeps_first_input():
    samples = [{"references": ["7"], "task": "a"}, {"references": ["9"], "task": "b"}]
    errors = RewardErrors()
    got = score(_reward, ["7", "boom 1", "9", "boom 2"], samples, group_size=2, errors=errors)
    assert got.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert errors.count == 2
    assert "KeyError" in errors.first and "boom 1" in errors.first and "'7'" in errors.first
    with pytest.raises(KeyError):
        score(_reward, ["boom"], samples[:1], group_size=1)


def test_reward_errors_tell_whether_every_call_of_a_step_failed():
    samples = [{"references": ["7"], "task": "a"}]
    errors = RewardErrors()
    score(_reward, ["7", "boom"], samples, group_size=2, errors=errors)
    assert (errors.step_scored, errors.step_failed, errors.step_all_failed) == (2, 1, False)
    score(_reward, ["boom 3", "boom 4"], samples, group_size=2, errors=errors)  # a second round, all failing
    assert (errors.step_scored, errors.step_failed, errors.step_all_failed) == (4, 3, False)
    assert "boom'" in errors.step_first[0] and isinstance(errors.step_first[1], KeyError)
    errors.new_step()
    assert (errors.step_scored, errors.step_failed, errors.step_all_failed, errors.step_first) == (
        0,
        0,
        False,
        None,
    )
    score(_reward, ["boom 5", "boom 6"], samples, group_size=2, errors=errors)
    assert errors.step_all_failed and "boom 5" in errors.step_first[0]
    assert errors.count == 5 and "'boom'" in errors.first  # the run's first failure is kept


def test_wrong_number_of_rewards_is_an_error():
    with pytest.raises(ValueError, match="returned 1 values for 2 completions"):
        score(lambda c, r, **m: [1.0], ["a", "b"], [{"references": ["a"]}], group_size=2)


G = 2


class _Engine:
    """Completions ``"<prompt>-<j>"``: prompts below 100 get uniform rewards, the others mixed ones."""

    group_size, temperature, max_new_tokens = G, 1.0, 1

    def __init__(self) -> None:
        self.rounds: list[list[int]] = []

    def generate(self, policy, tokenizer, prompts, greedy=False, seed=0, max_new_tokens=None):
        from longact_pl.rollout.types import RolloutBatch

        self.rounds.append([p[0] for p in prompts])
        n = len(prompts) * G
        ids = torch.tensor([[p[0], j] for p in prompts for j in range(G)])  # [N, 2]
        ones = torch.ones(n, 1, dtype=torch.long)
        return RolloutBatch(
            input_ids=ids, attention_mask=torch.ones_like(ids), completion_mask=ones,
            behaviour_logp=torch.zeros(n, 1), completions=[f"{p[0]}-{j}" for p in prompts for j in range(G)],
            prompt_width=1, group_size=G,
        )  # fmt: skip


def _mixed_reward(completions, references, **meta):
    return [float(int(c.split("-")[0]) >= 100 and c.endswith("-0")) for c in completions]


def _sample(engine, first: list[int], extra: list[list[int]], dist=None):
    from types import SimpleNamespace

    from longact_pl.sampling import sample_and_score

    def batches():
        for b in extra:
            yield [{"prompt_ids": [k], "references": []} for k in b]

    return sample_and_score(
        engine, None, SimpleNamespace(pad_token_id=0), _mixed_reward,
        [{"prompt_ids": [k], "references": []} for k in first],
        shape=lambda r, lengths: r, keep_groups=lambda r, g: r.view(-1, g).std(-1) > 0, max_rounds=3,
        more_samples=batches, seed=0, dist=dist,
    )  # fmt: skip


def _groups(scored) -> list[int]:
    return scored.batch.input_ids[::G, 0].tolist()


def test_dynamic_sampling_refills_and_cuts_to_the_batch_size():
    engine = _Engine()
    scored = _sample(engine, [1, 101], [[102, 2], [103, 104]])
    assert engine.rounds == [[1, 101], [102, 2]] and scored.rounds == 2 and scored.dropped_groups == 2
    assert _groups(scored) == [101, 102]
    assert scored.rewards.tolist() == [1.0, 0.0, 1.0, 0.0]


def test_ranks_generate_in_lock_step_and_keep_the_same_number_of_groups():
    # another rank: not done after round 1, done after round 2, kept 1 group
    dist = FakeOps(world_size=2, other_mins=[0, 1, 1])
    engine = _Engine()
    scored = _sample(engine, [101, 102], [[103, 104], [105, 106]], dist)
    # this rank was full after round 1 but generated round 2 with the other rank, then kept 1 group
    assert engine.rounds == [[101, 102], [103, 104]] and dist.min_calls == [1, 1, 2]
    assert _groups(scored) == [101] and len(scored.rewards) == G


def test_a_rank_with_no_group_makes_every_rank_skip():
    other = FakeOps(world_size=2, other_mins=[1, 0])  # the other rank is done and kept nothing
    assert _sample(_Engine(), [101, 102], [], other) is None
    assert (
        _sample(_Engine(), [1, 2], [[3, 4], [5, 6]], FakeOps(world_size=2)) is None
    )  # 3 rounds, all uniform


def test_a_sequence_parallel_group_trains_on_its_first_ranks_rollouts_and_rewards():
    """This rank generated other prompts (say its own extra-prompt draw); the first rank's round wins."""
    first = _Engine().generate(None, None, [[101], [102]])
    dist = FakeOps(world_size=2, shares=[(first, torch.tensor([1.0, 0.0, 0.0, 1.0]))])
    scored = _sample(_Engine(), [201, 202], [], dist)
    assert _groups(scored) == [101, 102]
    assert scored.raw_rewards.tolist() == scored.first_round_rewards.tolist() == [1.0, 0.0, 0.0, 1.0]
