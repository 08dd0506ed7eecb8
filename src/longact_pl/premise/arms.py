"""The masks compared: the masking group's mask, K random masks, the inverse (least salient) and references.

Arms, each one ``[R]`` bool vector over the stacked target rows (``premise/grads.py``):

* ``mask``: the mask under test, built exactly as training builds it (the masking group's selector, ratio,
  unit, scope, pairing, statistic, measured at ``measure_at``) from calibration prompts at the long length;
* ``random_<k>``: ``RandomK`` with seed ``seed + k`` (same number of units per matrix);
* ``inverse``: ``BottomK`` (the ``masking=inverse`` control: the least salient units);
* ``all`` (every row: share 1, the dense Q/K update) and ``complement`` (``~mask``: share ``1 - mask``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn

from longact_pl.masking.builder import MaskBuilder
from longact_pl.masking.calibrate import collect_stats
from longact_pl.masking.mask_metrics import l1_share
from longact_pl.masking.selection import BottomK, RandomK, Selector


def stack(builder: MaskBuilder, masks: Mapping[str, Tensor]) -> Tensor:
    """Target name -> row mask, stacked in target order into one ``[R]`` bool vector."""
    return torch.cat([masks[n].bool().cpu() for n in builder.names])  # [R]


def _with(builder: MaskBuilder, selector: Selector, seed: int) -> MaskBuilder:
    """The same builder (targets, units, pairing) with another selector and seed."""
    other = copy.copy(builder)
    other.selector = selector
    other.options = replace(builder.options, selector=type(selector).__name__, seed=seed)
    return other


def build_arms(
    model: nn.Module,
    builder: MaskBuilder,
    prompts: Sequence[Sequence[int]],
    random_masks: int,
    seed: int,
    bf16: bool = False,
) -> tuple[dict[str, Tensor], dict]:
    """Calibrate on ``prompts`` and build every arm's mask.

    Args:
        model: The model (its target projections are measured).
        builder: The mask builder of the masking group (``SaliencyMask.check_model``).
        prompts: Calibration prompts (token ids, no answer).
        random_masks: How many random masks.
        seed: Seed of the first random mask.
        bf16: Calibrate under bf16 autocast.

    Returns:
        ``(arms, summary)``: arm name -> ``[R]`` bool mask; and the calibration summary (prompt lengths,
        rows kept, the mask's activation L1 share).
    """
    stats = collect_stats(model, builder.targets, prompts, bf16, units=builder.stats_units())
    scores = builder.scores(stats)
    own = builder.build(scores)
    arms = {"mask": stack(builder, own)}
    for k in range(random_masks):
        arms[f"random_{k}"] = stack(builder, _with(builder, RandomK(), seed + k).build(scores))
    arms["inverse"] = stack(builder, _with(builder, BottomK(), seed).build(scores))
    arms["all"] = torch.ones_like(arms["mask"])
    arms["complement"] = ~arms["mask"]
    l1 = {n: s.mean_l1() for n, s in stats.items()}
    summary = {
        "selector": builder.options.selector,
        "calib_prompt_tokens": [len(p) for p in prompts],
        "rows": int(arms["mask"].numel()),
        "kept_rows": {name: int(m.sum()) for name, m in arms.items()},
        "mask_act_l1_share": sum(l1_share(l1[n], own[n]) for n in builder.names) / len(builder.names),
    }
    return arms, summary


def random_arms(arms: Mapping[str, Tensor]) -> list[str]:
    """Names of the random arms, in order."""
    return [a for a in arms if a.startswith("random_")]
