"""From per-item records to paired bootstrap intervals and the decision line (pure; no plotting, no files).

Every comparison is paired over items: the statistic is the mean over items of a per-item difference (the
mask's value minus the mean of the random masks' on the same item, or the long value minus the short), and
its interval resamples items (``longact_pl.stats.bootstrap.paired_ci``). The minimal detectable effect
(MDE) is ``2.80 * se`` (95% two-sided, 80% power).

The decision line tests three parts of the premise ("long contexts concentrate the learning signal in the
salient Q/K rows, so a salient-row update serves long inputs best"):

* A: the mask holds more of the long-specific gradient ``g_long - g_short`` than random masks (M1 diff);
* B: the mask's share grows with length (M1 long minus short, per item);
* C: the mask's update lowers the held-out long NLL more than random masks' per unit step (M2, sign).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from longact_pl.stats.bootstrap import Interval, paired_ci

M1_KEYS = ("short", "long", "diff")
ARMS_SHOWN = ("mask", "random", "inverse", "all")


def _randoms(values: dict[str, float]) -> float:
    """Mean over the random arms of one item's values."""
    r = [v for k, v in values.items() if k.startswith("random_")]
    return float(np.mean(r)) if r else float("nan")


def arm_value(values: dict[str, float], arm: str) -> float:
    """One arm's value; ``random`` is the mean of the random arms."""
    return _randoms(values) if arm == "random" else float(values[arm])


def ci(x: Sequence[float], n_boot: int, seed: int = 0) -> dict[str, float]:
    """Mean, 95% percentile interval, half-width and MDE of per-item values over items."""
    iv: Interval = paired_ci(np.asarray(x, dtype=np.float64), n_boot=n_boot, seed=seed)
    return {
        "mean": iv.mean,
        "lo": iv.lo,
        "hi": iv.hi,
        "half_width": iv.half_width,
        "mde": iv.mde,
        "n": len(x),
    }


def m1_table(records: Sequence[dict], n_boot: int) -> dict[str, Any]:
    """M1 over all items: per arm and gradient, the mask minus random / inverse, and the length effect."""
    out: dict[str, Any] = {}
    for key in M1_KEYS:
        rows = [r["m1"][key] for r in records]
        out[key] = {arm: ci([arm_value(v, arm) for v in rows], n_boot) for arm in ARMS_SHOWN}
        out[key]["mask-random"] = ci([v["mask"] - _randoms(v) for v in rows], n_boot)
        out[key]["mask-inverse"] = ci([v["mask"] - v["inverse"] for v in rows], n_boot)
        out[key]["mask+complement"] = ci([v["mask"] + v["complement"] for v in rows], n_boot)
    out["length_effect"] = {
        "mask": ci([r["m1"]["long"]["mask"] - r["m1"]["short"]["mask"] for r in records], n_boot),
        "mask-random": ci(
            [
                (r["m1"]["long"]["mask"] - _randoms(r["m1"]["long"]))
                - (r["m1"]["short"]["mask"] - _randoms(r["m1"]["short"]))
                for r in records
            ],
            n_boot,
        ),
    }
    out["length_effect"]["diff-short"] = ci(
        [r["m1"]["diff"]["mask"] - r["m1"]["short"]["mask"] for r in records], n_boot
    )
    out["cos_long_short"] = ci([r["cos_long_short"] for r in records], n_boot)
    return out


def m2_table(records: Sequence[dict], n_boot: int) -> dict[str, Any]:
    """M2 over the held-out items: gain per unit step of every arm, and the mask minus random / inverse."""
    held = [r for r in records if "m2" in r]
    if not held:
        return {}
    out: dict[str, Any] = {}
    for norm in ("sign", "unit"):
        for length in ("long", "short"):
            rows = [r["m2"][length][norm] for r in held]
            cell = {arm: ci([arm_value(v, arm) for v in rows], n_boot) for arm in ARMS_SHOWN}
            cell["mask-random"] = ci([v["mask"] - _randoms(v) for v in rows], n_boot)
            cell["mask-inverse"] = ci([v["mask"] - v["inverse"] for v in rows], n_boot)
            out[f"{norm}/{length}"] = cell
    return out


def m3_table(records: Sequence[dict], n_boot: int) -> dict[str, Any]:
    """M3 over the items that got the real step: NLL change per arm, lr and length; mask minus random_0."""
    done = [r for r in records if "m3" in r]
    if not done:
        return {}
    out: dict[str, Any] = {}
    arms = list(done[0]["m3"]["delta_nll"])
    for lr in done[0]["m3"]["delta_nll"][arms[0]]:
        for length in ("long", "short"):
            vals = {a: [r["m3"]["delta_nll"][a][lr][length] for r in done] for a in arms}
            cell = {a: ci(v, n_boot) for a, v in vals.items()}
            if "random_0" in vals:
                cell["mask-random_0"] = ci(np.subtract(vals["mask"], vals["random_0"]), n_boot)
            if "inverse" in vals:
                cell["mask-inverse"] = ci(np.subtract(vals["mask"], vals["inverse"]), n_boot)
            out[f"lr={lr}/{length}"] = cell
    return out


def _above(c: dict[str, float]) -> bool:
    return c["lo"] > 0


def decision(m1: dict[str, Any], m2: dict[str, Any]) -> tuple[str, dict[str, bool]]:
    """The decision line and the three tests A, B, C (see the module docstring)."""
    tests = {
        "A_long_specific_share_above_random": _above(m1["diff"]["mask-random"]),
        "B_share_grows_with_length": _above(m1["length_effect"]["mask"]),
        "C_long_gain_above_random": bool(m2) and _above(m2["sign/long"]["mask-random"]),
    }
    a, b, c = tests.values()
    if a and b and c:
        line = (
            "SUPPORTED: the mask holds more of the long-specific gradient than random masks, its share "
            "grows with length, and its update lowers the held-out long NLL more than a random mask's per "
            "unit step."
        )
    elif (a or c) and not b:
        le = m1["length_effect"]["mask"]
        line = (
            "PARTLY: the mask's rows are a better-than-random place for the update ("
            + ", ".join(x for x, ok in (("M1 long-specific share", a), ("M2 long gain", c)) if ok)
            + " above random), but the concentration does not grow with length at these lengths (mask share "
            f"long - short {le['mean']:+.3f} [{le['lo']:+.3f}, {le['hi']:+.3f}], MDE {le['mde']:.3f}): the "
            "'long contexts concentrate the signal' part of the premise is not shown."
        )
    elif a or b or c:
        failed = [k for k, ok in tests.items() if not ok]
        line = f"MIXED: some parts hold, these do not: {', '.join(failed)}."
    else:
        line = (
            "NOT SUPPORTED: the mask holds no more of the long-specific gradient than random masks, its "
            "share does not grow with length, and its update helps long inputs no more than a random mask's."
        )
    return line + _caveats(m1, m2), tests


def _caveats(m1: dict[str, Any], m2: dict[str, Any]) -> str:
    """What the three tests do not see, stated when it shows.

    Is the *long-specific* part more concentrated than the short gradient, and is the mask's advantage over
    random larger at the long length than at the short one?
    """
    out = []
    ds = m1["length_effect"]["diff-short"]
    if ds["lo"] <= 0:
        out.append(
            "the long-specific part g_long - g_short is no more concentrated in the mask than the short "
            f"gradient (share difference {ds['mean']:+.3f} [{ds['lo']:+.3f}, {ds['hi']:+.3f}]), so the rise "
            "of the long share comes from where short and long-specific gradients add up, not from a more "
            "concentrated long-context signal"
        )
    if m2:
        ratio = {
            length: m2[f"sign/{length}"]["mask"]["mean"] / m2[f"sign/{length}"]["random"]["mean"]
            for length in ("long", "short")
            if m2[f"sign/{length}"]["random"]["mean"] > 0
        }
        if len(ratio) == 2 and ratio["long"] <= 1.1 * ratio["short"]:
            out.append(
                f"the mask's first-order gain over random is {ratio['long']:.2f}x at the long length and "
                f"{ratio['short']:.2f}x at the short one: a better place for the update at any length, not a "
                "long-context-specific one"
            )
    return (" Caveats: " + "; ".join(out) + ".") if out else ""
