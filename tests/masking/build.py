"""Row masks from per-channel scores through ``MaskBuilder.build``, the path training takes (no model)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from longact_pl.masking.builder import MaskBuilder
from longact_pl.masking.options import MaskingOptions
from longact_pl.masking.selection import Selector
from longact_pl.masking.stats import Probe
from longact_pl.masking.targets import Target
from longact_pl.masking.units import Channel, SelectionUnit, unit_scores


def build_masks(
    scores: Mapping[str, Tensor],
    groups: Mapping[str, Sequence[str]],
    selector: Selector,
    ratio: float,
    unit: SelectionUnit | None = None,
    head_dim: int = 0,
    scope: str = "per_matrix",
    seed: int = 0,
) -> dict[str, Tensor]:
    """Name -> bool row mask from name -> per-channel scores ``[rows]`` (a unit's score: its channels' sum).

    Each name becomes a target over a bare ``nn.Linear`` with ``rows`` outputs, in group ``groups``' key.
    """
    unit = Channel() if unit is None else unit
    targets = []
    for group, names in groups.items():
        for name in names:
            linear = nn.Linear(1, scores[name].numel(), bias=False)
            targets.append(Target(name, group, name, linear, Probe(linear)))
    options = MaskingOptions(
        selector=type(selector).__name__, targets=tuple(groups), ratio=ratio, statistic="mean_abs",
        unit=unit.name, scope=scope, pairing="independent", norms="dense", others="dense",
        measure_at="proj", calib_samples=1, refresh_every=0, ema=0.9, seed=seed,
    )  # fmt: skip
    builder = MaskBuilder(targets, options, selector, unit, head_dim)
    units = {n: unit_scores(scores[n].detach().float().cpu(), builder.index[n]) for n in builder.names}
    return builder.build(units)
