"""The paired bootstrap against hand-computed standard errors and degenerate cases."""

import math

import numpy as np
import pytest

from longact_pl.stats import paired_ci


def test_constant_differences_give_a_point_interval():
    ci = paired_ci(np.full((3, 10), 0.25), n_boot=500)
    assert (ci.mean, ci.lo, ci.hi, ci.se) == (0.25, 0.25, 0.25, 0.0)
    assert ci.excludes_zero and ci.half_width == 0.0 and ci.mde == 0.0
    zero = paired_ci(np.zeros((3, 10)), n_boot=500)
    assert not zero.excludes_zero


def test_one_seed_matches_the_standard_error_of_a_mean():
    rng = np.random.default_rng(1)
    d = rng.normal(0.1, 1.0, size=400)
    ci = paired_ci(d, n_boot=4000, seed=3)
    se = d.std() / math.sqrt(d.size)  # the plug-in standard error the bootstrap estimates
    assert ci.mean == pytest.approx(d.mean())
    assert ci.se == pytest.approx(se, rel=0.05)
    assert ci.half_width == pytest.approx(1.96 * se, rel=0.08)
    assert ci.mde == pytest.approx(2.8016 * ci.se, rel=1e-3)  # z_0.975 + z_0.8
    assert (ci.n_seeds, ci.n_prompts) == (1, 400)


def test_seeds_are_resampled_too():
    # every prompt agrees within a seed; the seeds disagree: all the uncertainty is between seeds
    d = np.repeat(np.array([[-1.0], [0.0], [1.0]]), 50, axis=1)  # [3, 50]
    ci = paired_ci(d, n_boot=4000, seed=0)
    # the mean of 3 draws with replacement from {-1, 0, 1}: sd = sqrt((2/3) / 3)
    assert ci.mean == 0.0 and ci.se == pytest.approx(math.sqrt(2 / 9), rel=0.05)
    assert ci.lo < -0.5 and ci.hi > 0.5


def test_strata_keep_their_sizes_and_weights():
    d = np.array([[1.0, 1.0, 1.0, 0.0]])
    plain = paired_ci(d, strata=["a", "a", "a", "b"], n_boot=500)
    assert (plain.mean, plain.lo, plain.hi) == (0.75, 0.75, 0.75)  # each stratum's mean never changes
    equal = paired_ci(d, strata=["a", "a", "a", "b"], weights={"a": 1, "b": 1}, n_boot=500)
    assert (equal.mean, equal.lo, equal.hi) == (0.5, 0.5, 0.5)
    unstratified = paired_ci(d, n_boot=500)
    assert unstratified.lo < 0.75 < unstratified.hi


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="finite"):
        paired_ci([[float("nan"), 1.0]])
    with pytest.raises(ValueError, match="one each"):
        paired_ci([[1.0, 0.0]], strata=["a"])
    with pytest.raises(ValueError, match=r"no weight for stratum\(s\) \['b'\]"):
        paired_ci([[1.0, 0.0]], strata=["a", "b"], weights={"a": 1.0})
