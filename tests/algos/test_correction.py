"""Rollout correction weights and mismatch metrics against numbers worked out by hand."""

import math
from types import SimpleNamespace

import pytest
import torch

from longact_pl.algos.correction import RolloutCorrection, check_training_sampler
from longact_pl.algos.correction_weights import GeometricMean, Mask, SequenceProduct, TokenRatio, Truncate
from tests.helpers import CONF

LN2, LN3, LN15 = math.log(2.0), math.log(3.0), math.log(1.5)
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
# log r = log pi_train - log pi_sampler per token; ratios: row 0 (2, 1, 1/4), row 1 (3, 1/3),
# row 2 (1.5, 1.5, 1, 1)
LOG_R = torch.tensor([[LN2, 0.0, -2 * LN2, 0.0], [LN3, -LN3, 0.0, 0.0], [LN15, LN15, 0.0, 0.0]])
TRAIN = torch.tensor(
    [[-1.0, -2.0, -0.5, float("nan")], [-0.3, -1.2, float("inf"), 0.0], [-2.0, -0.1, -0.7, -1.5]]
)
SAMPLER = torch.where(MASK.bool(), TRAIN - LOG_R, torch.full_like(TRAIN, -float("inf")))  # garbage at padding


# the config names of the level and mode classes, so the cases below read as the presets do
LEVELS = {"token": TokenRatio(), "sequence": SequenceProduct(), "geometric": GeometricMean()}
MODES = {"truncate": Truncate(), "mask": Mask()}


def _corr(level=None, mode=None, **settings) -> RolloutCorrection:
    """``RolloutCorrection`` with ``level`` / ``mode`` given by name (an unknown value is passed as is)."""
    level = LEVELS.get(level, level) if isinstance(level, str) else level
    mode = MODES.get(mode, mode) if isinstance(mode, str) else mode
    return RolloutCorrection(level=level, mode=mode, **settings)


def _weights(**settings):
    return _corr(**settings).weights(TRAIN, SAMPLER, MASK)


def _close(got, want):
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    ("settings", "want"),
    [
        # per token, capped at 2: the 3 becomes 2; padding 1
        ({"level": "token"}, [[2, 1, 0.25, 1], [2, 1 / 3, 1, 1], [1.5, 1.5, 1, 1]]),
        # per sequence, product: 2 * 1 * 1/4 = 0.5; 3 * 1/3 = 1; 1.5^2 = 2.25 -> 2
        ({"level": "sequence"}, [[0.5, 0.5, 0.5, 1], [1, 1, 1, 1], [2, 2, 2, 2]]),
        # per sequence, geometric mean: 2^(-1/3) = 0.7937; 1; 1.5^(1/2) = 1.2247 (all below the cap 2)
        ({"level": "geometric"}, [[2 ** (-1 / 3)] * 3 + [1], [1] * 4, [1.5**0.5] * 4]),
        # geometric, masked to [0.8, 1.25]: row 0 (0.794) dropped
        ({"level": "geometric", "mode": "mask", "low": 0.8, "high": 1.25},
         [[0, 0, 0, 1], [1] * 4, [1.5**0.5] * 4]),
        # per token, masked to [1/2, 2] (low defaults to 1 / high): 1/4, 3 and 1/3 dropped
        ({"level": "token", "mode": "mask"}, [[2, 1, 0, 1], [0, 0, 1, 1], [1.5, 1.5, 1, 1]]),
        # no weights, reject sequences with a token ratio below 0.3 (row 0's 1/4; row 1's 1/3 stays)
        ({"reject_low": 0.3}, [[0, 0, 0, 1], [1] * 4, [1] * 4]),
        # token weights and rejection above 2.5 (row 1's 3)
        ({"level": "token", "reject_high": 2.5}, [[2, 1, 0.25, 1], [0, 0, 1, 1], [1.5, 1.5, 1, 1]]),
    ],
)  # fmt: skip
def test_weights(settings, want):
    _close(_weights(**settings), want)


def test_no_correction_is_no_weights():
    assert _weights() is None and not _corr().active


def test_metrics_of_the_mismatch():
    m = _corr(level="token", length_buckets=(2, 3)).metrics(TRAIN, SAMPLER, MASK)
    # k3 = r - log r - 1 per token: (2 - ln2 - 1) + 0 + (1/4 + 2 ln2 - 1) + (3 - ln3 - 1) + (1/3 + ln3 - 1)
    #   + 2 (1.5 - ln1.5 - 1) + 0 + 0, over 9 tokens
    k3 = [1 - LN2, 0, 2 * LN2 - 0.75, 2 - LN3, LN3 - 2 / 3, 0.5 - LN15, 0.5 - LN15, 0, 0]
    _close(m["k3_kl"], sum(k3) / 9)
    _close(m["log_ratio_abs_mean"], (LN2 + 2 * LN2 + 2 * LN3 + 2 * LN15) / 9)
    _close(m["log_ratio_abs_max"], 2 * LN2)
    # token weights capped at 2: only row 1's 3 is truncated
    _close(m["token_truncated_frac"], 1 / 9)
    _close(m["seq_truncated_frac"], 1 / 3)
    _close(m["token_masked_frac"], 0.0)
    # buckets by completion length: row 1 (2 tokens) <= 2, row 0 (3) <= 3, row 2 (4) > 3
    _close(m["k3_kl/len_le2"], (2 - LN3 + LN3 - 2 / 3) / 2)  # = 2/3
    _close(m["k3_kl/len_le3"], (1 - LN2 + 2 * LN2 - 0.75) / 3)
    _close(m["k3_kl/len_gt3"], (1 - 2 * LN15) / 4)
    _close(m["seq_truncated_frac/len_le2"], 1.0)
    _close(m["log_ratio_abs_max/len_gt3"], LN15)


def test_metrics_count_masked_and_rejected_sequences():
    m = _corr(level="token", mode="mask", reject_low=0.3).metrics(TRAIN, SAMPLER, MASK)
    # dropped: row 0 all 3 tokens (rejected: its 1/4 < 0.3), row 1 both (3 > 2 and 1/3 < 1/2)
    _close(m["token_masked_frac"], 5 / 9)
    _close(m["seq_masked_frac"], 2 / 3)
    _close(m["seq_rejected_frac"], 1 / 3)
    _close(m["token_truncated_frac"], 0.0)


def test_empty_buckets_are_left_out():
    m = _corr(length_buckets=(100,)).metrics(TRAIN, SAMPLER, MASK)
    assert "k3_kl/len_le100" in m and not any(k.endswith("len_gt100") for k in m)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"level": "tokens"}, r"correction\.level must be a WeightLevel class .*got 'tokens'"),
        ({"mode": "clip"}, r"correction\.mode must be a WeightMode class .*got 'clip'"),
        ({"high": 0.0}, r"correction\.high must be > 0"),
        ({"level": "token", "mode": "mask", "low": 3.0, "high": 2.0}, r"correction\.low must be in \(0, "),
        ({"level": "token", "low": 0.5}, r"correction\.low=0\.5 has no effect with correction\.mode="),
        ({"reject_low": 2.0, "reject_high": 1.5}, r"correction\.reject_low=2\.0 must be <= correction\."),
        ({"reject_high": -1.0}, r"correction\.reject_high must be > 0"),
        ({"length_buckets": (512, 256)}, r"correction\.length_buckets must be increasing"),
    ],
)  # fmt: skip
def test_bad_settings_name_the_field(settings, match):
    with pytest.raises(ValueError, match=match):
        _corr(**settings)


def test_training_refuses_truncated_sampling_and_correction_without_an_external_sampler():
    hf = SimpleNamespace(top_p=1.0, top_k=0, external=False)
    check_training_sampler(hf, _corr())  # metrics only: fine
    with pytest.raises(
        ValueError, match=r"correction\.level=token .* rollout=SimpleNamespace .*rollout=vllm"
    ):
        check_training_sampler(hf, _corr(level="token"))
    with pytest.raises(ValueError, match=r"correction\.level=None \(reject_low=0\.1"):
        check_training_sampler(hf, _corr(reject_low=0.1))
    check_training_sampler(SimpleNamespace(top_p=1.0, top_k=0, external=True), _corr(level="token"))
    for top_p, top_k in ((0.9, 0), (1.0, 20)):
        with pytest.raises(
            ValueError, match=rf"rollout\.top_p={top_p} / rollout\.top_k={top_k}: training needs"
        ):
            check_training_sampler(SimpleNamespace(top_p=top_p, top_k=top_k, external=True), None)


@pytest.mark.parametrize("name", ["none", "token_tis", "sequence_tis", "sequence_mask"])
def test_presets_compose_and_comment_every_field(tmp_path, name):
    from hydra.utils import instantiate

    from tests.helpers import compose_train

    corr = instantiate(compose_train(tmp_path, f"correction={name}").correction)
    assert isinstance(corr, RolloutCorrection) and corr.active == (name != "none")
    lines = (CONF / "correction" / f"{name}.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#"):
            assert i > 0 and lines[i - 1].lstrip().startswith("#"), f"{name}.yaml line {i + 1}: {line!r}"
