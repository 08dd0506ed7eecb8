"""Paired intervals and the decision line on synthetic per-item records with known effects."""

import numpy as np

from longact_pl.premise.analysis import decision, m1_table, m2_table


def _record(i, mask_short, mask_long, mask_diff, gain_mask, gain_random):
    rng = np.random.default_rng(i)
    noise = lambda: float(rng.normal(0, 0.005))  # noqa: E731
    m1 = {}
    for key, mask in (("short", mask_short), ("long", mask_long), ("diff", mask_diff)):
        m = mask + noise()
        m1[key] = {
            "mask": m,
            "random_0": 0.3 + noise(),
            "random_1": 0.3 + noise(),
            "inverse": 0.1,
            "all": 1.0,
        }
        m1[key]["complement"] = 1 - m
    gains = {
        "mask": gain_mask + noise(),
        "random_0": gain_random + noise(),
        "random_1": gain_random,
        "inverse": 0.0,
    }
    gains["all"] = 1.0
    m2 = {length: {"sign": dict(gains), "unit": dict(gains)} for length in ("long", "short")}
    return {"m1": m1, "cos_long_short": 0.5, "m2": m2}


def test_supported_when_all_three_parts_hold():
    records = [_record(i, 0.60, 0.70, 0.75, 0.5, 0.3) for i in range(12)]
    m1, m2 = m1_table(records, 500), m2_table(records, 500)
    assert abs(m1["long"]["mask-random"]["mean"] - 0.40) < 0.01
    assert abs(m1["length_effect"]["mask"]["mean"] - 0.10) < 0.01
    assert m1["long"]["mask+complement"]["mean"] == 1.0
    line, tests = decision(m1, m2)
    assert line.startswith("SUPPORTED") and all(tests.values())
    assert (
        "long-specific part" not in line
    )  # 0.75 in the long-specific part against 0.60 of the short gradient
    assert "1.67x at the long length and 1.67x at the short" in line  # 0.5 / 0.3 at both lengths


def test_caveat_when_the_long_specific_part_is_less_concentrated_than_the_short_gradient():
    records = [_record(i, 0.60, 0.66, 0.55, 0.5, 0.3) for i in range(12)]
    line, tests = decision(m1_table(records, 500), m2_table(records, 500))
    assert (
        line.startswith("SUPPORTED") and "Caveats: the long-specific part g_long - g_short is no more" in line
    )


def test_partly_when_the_share_does_not_grow_with_length():
    records = [_record(i, 0.62, 0.62, 0.60, 0.5, 0.3) for i in range(12)]
    line, tests = decision(m1_table(records, 500), m2_table(records, 500))
    assert line.startswith("PARTLY") and "MDE" in line
    assert tests == {
        "A_long_specific_share_above_random": True,
        "B_share_grows_with_length": False,
        "C_long_gain_above_random": True,
    }


def test_not_supported_when_the_mask_is_no_better_than_random():
    records = [_record(i, 0.30, 0.30, 0.30, 0.3, 0.3) for i in range(12)]
    line, tests = decision(m1_table(records, 500), m2_table(records, 500))
    assert line.startswith("NOT SUPPORTED") and not any(tests.values())
