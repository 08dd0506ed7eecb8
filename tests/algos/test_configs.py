from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from longact_pl.algos import DAPO, GRPO, Algorithm, DrGRPO

CONF = Path(__file__).resolve().parents[2] / "conf" / "algo"


def _load(name: str):
    root = OmegaConf.create(
        {"rollout": {"max_new_tokens": 40}, "algo": OmegaConf.load(CONF / f"{name}.yaml")}
    )
    return instantiate(root.algo)


def test_grpo_yaml():
    algo = _load("grpo")
    assert isinstance(algo, GRPO) and isinstance(algo, Algorithm)
    loss = algo.policy_loss
    assert (loss.eps_low, loss.eps_high, loss.kl_coef, loss.aggregation) == (
        0.2,
        0.2,
        0.04,
        "seq_mean_token_mean",
    )
    assert algo.scale_by_std is True


def test_dapo_yaml():
    algo = _load("dapo")
    assert isinstance(algo, DAPO)
    loss = algo.policy_loss
    assert (loss.eps_low, loss.eps_high, loss.kl_coef, loss.aggregation) == (0.2, 0.28, 0.0, "token_mean")
    assert (algo.dynamic_sampling, algo.max_gen_rounds) == (True, 3)
    # interpolated from rollout.max_new_tokens
    assert (algo.overlong_max_len, algo.overlong_cache_len, algo.overlong_penalty_coef) == (40, 8, 1.0)


def test_dr_grpo_yaml():
    algo = _load("dr_grpo")
    assert isinstance(algo, DrGRPO)
    loss = algo.policy_loss
    assert (loss.eps_low, loss.eps_high, loss.kl_coef, loss.aggregation) == (
        0.2,
        0.2,
        0.0,
        "seq_mean_token_sum_norm",
    )
    assert loss.max_len == 40
    assert algo.scale_by_std is False


@pytest.mark.parametrize("name", ["grpo", "dapo", "dr_grpo"])
def test_every_field_has_a_comment_above(name):
    lines = (CONF / f"{name}.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#"):
            assert i > 0 and lines[i - 1].lstrip().startswith("#"), f"{name}.yaml line {i + 1}: {line!r}"
