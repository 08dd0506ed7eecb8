import pytest

from longact_pl.algos import (
    Algorithm,
    GroupCentered,
    GroupNormalized,
    GroupPolicyGradient,
    SequenceClip,
    TokenClip,
)
from tests.algos.presets import PRESETS, preset
from tests.helpers import CONF


def _fields(algo):
    loss = algo.policy_loss
    return (
        loss.eps_low,
        loss.eps_high,
        loss.kl_coef,
        loss.aggregation,
        type(loss.surrogate),
        loss.kl_estimator,
    )


def test_grpo_yaml():
    algo = preset("grpo")
    assert isinstance(algo, GroupPolicyGradient) and isinstance(algo, Algorithm)
    assert _fields(algo) == (0.2, 0.2, 0.04, "seq_mean_token_mean", TokenClip, "k3")
    assert isinstance(algo.advantage, GroupNormalized) and algo.policy_loss.kl_in_reward is False
    assert (algo.dynamic_sampling, algo.overlong_penalty_coef, algo.entropy_coef) == (False, 0.0, 0.0)


def test_dapo_yaml():
    algo = preset("dapo")
    assert _fields(algo) == (0.2, 0.28, 0.0, "token_mean", TokenClip, "k3")
    assert (algo.dynamic_sampling, algo.max_gen_rounds) == (True, 3)
    # interpolated from rollout.max_new_tokens
    assert (algo.overlong_max_len, algo.overlong_cache_len, algo.overlong_penalty_coef) == (40, 8, 1.0)


def test_dr_grpo_yaml():
    algo = preset("dr_grpo")
    assert _fields(algo) == (0.2, 0.2, 0.0, "seq_mean_token_sum_norm", TokenClip, "k3")
    assert algo.policy_loss.max_len == 40
    assert isinstance(algo.advantage, GroupCentered)


def test_gspo_yaml_has_the_published_clip_ranges():
    algo = preset("gspo")
    # GSPO (Zheng et al., 2025, Sec. 5.1), as in verl's examples/gspo_trainer: clip 3e-4 / 4e-4
    assert _fields(algo) == (3e-4, 4e-4, 0.0, "seq_mean_token_mean", SequenceClip, "k3")
    assert isinstance(algo.advantage, GroupNormalized) and algo.dynamic_sampling is False


@pytest.mark.parametrize("name", PRESETS)
def test_every_field_has_a_comment_above(name):
    lines = (CONF / "algo" / f"{name}.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#"):
            assert i > 0 and lines[i - 1].lstrip().startswith("#"), f"{name}.yaml line {i + 1}: {line!r}"
