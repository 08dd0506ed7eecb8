"""From statistics to masks for a fixed set of targets: units, Q-K pairing, fused parts, entering rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from longact_pl.masking.options import MaskingOptions
from longact_pl.masking.pairing import joint_scores, split_joint
from longact_pl.masking.selection import Selector, select_units
from longact_pl.masking.stats import ChannelStats
from longact_pl.masking.targets import Target
from longact_pl.masking.units import SelectionUnit, expand_units, unit_scores

JOINT_GROUP = "q_k_joint"


def _qk_pairs(targets: Sequence[Target]) -> dict[str, tuple[Target, Target]]:
    """Attention module name -> (query target, key target), for ``pairing=joint``.

    Raises:
        ValueError: If a layer has a query target without a key target or the other way round.
    """
    sides: dict[str, dict[str, Target]] = {}
    for t in targets:
        if t.role:
            sides.setdefault(t.attention, {})[t.role] = t
    for attention, found in sides.items():
        if set(found) != {"q", "k"}:
            raise ValueError(
                f"masking.pairing=joint: {attention} has only a {'query' if 'q' in found else 'key'} target; "
                "it needs both its query and its key projection among masking.targets"
            )
    return {a: (s["q"], s["k"]) for a, s in sides.items()}


class MaskBuilder:
    """Builds row masks for ``targets`` from their statistics, as ``options`` say.

    Args:
        targets: The targets (``masking/targets.py``).
        options: The run's masking options.
        selector: Picks units from scores.
        unit: The selection unit, bound to the model (``SelectionUnit.bind``).
        head_dim: Channels per head (unit/pairing need it; 0 for ``Channel`` units with independent pairing).
    """

    def __init__(
        self,
        targets: Sequence[Target],
        options: MaskingOptions,
        selector: Selector,
        unit: SelectionUnit,
        head_dim: int,
    ) -> None:
        self.targets = list(targets)
        self.options, self.selector, self.unit, self.head_dim = options, selector, unit, head_dim
        self.index = {t.name: unit.index(t.rows, head_dim) for t in self.targets}  # [rows] each
        self.joint = _qk_pairs(self.targets) if options.pairing == "joint" else {}
        self._paired = {t.name for pair in self.joint.values() for t in pair}

    @property
    def names(self) -> list[str]:
        """Target names, in module order."""
        return [t.name for t in self.targets]

    @property
    def linears(self) -> dict[str, nn.Linear]:
        """Module name -> masked ``nn.Linear`` (a fused module once)."""
        return {t.module: t.linear for t in self.targets}

    def stats_units(self) -> dict[str, Tensor | None]:
        """Target -> channel-to-unit map if units are scored by magnitude (``RopePair``), else None."""
        magnitude = self.unit.scored_by_magnitude
        return {t.name: self.index[t.name] if magnitude else None for t in self.targets}

    def scores(self, stats: Mapping[str, ChannelStats]) -> dict[str, Tensor]:
        """Unit scores of every target from its statistics (a head's = the sum of its channels')."""
        out = {}
        for t in self.targets:
            s = stats[t.name]
            v = s.statistic(self.options.statistic)  # [units] or [rows]
            out[t.name] = v if s.units is not None else unit_scores(v, self.index[t.name])  # [n_units]
        return out

    def build(self, scores: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Row masks (True = trained) of every target from its unit scores.

        Args:
            scores: Target name -> unit scores.  # [n_units] each

        Returns:
            Target name -> bool row mask over the target's rows, on CPU.  # [rows] each
        """
        opts = self.options
        groups: dict[str, list[str]] = {}
        units: dict[str, Tensor] = {}
        for t in self.targets:
            if t.name not in self._paired:
                groups.setdefault(t.group, []).append(t.name)
                units[t.name] = scores[t.name]
        heads = {}
        for attention, (q, k) in self.joint.items():
            heads[attention] = (q.rows // self.head_dim, k.rows // self.head_dim)
            units[attention] = joint_scores(scores[q.name], scores[k.name], *heads[attention])  # [G*U]
            groups.setdefault(JOINT_GROUP, []).append(attention)
        seed = opts.seed if opts.seed is not None else 0
        keep = select_units(units, groups, self.selector, opts.ratio, opts.scope, seed)
        for attention, (q, k) in self.joint.items():
            keep[q.name], keep[k.name] = split_joint(keep.pop(attention), *heads[attention])
        return {n: expand_units(keep[n], self.index[n]) for n in self.names}  # [rows] each

    def module_masks(self, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Row masks over whole modules: a fused module's V rows are trained unless ``others=frozen``.

        Args:
            masks: Target name -> row mask over the target's rows.

        Returns:
            Module name -> bool row mask over all ``out_features`` rows.  # [out_features] each
        """
        out: dict[str, Tensor] = {}
        for t in self.targets:
            if t.part_rows is None:
                out[t.module] = masks[t.name]
                continue
            dense = self.options.others == "dense"
            full = out.setdefault(t.module, torch.full((t.linear.out_features,), dense, dtype=torch.bool))
            full[t.part_rows] = masks[t.name]
        return out

    def entering(
        self, old: Mapping[str, Tensor], new: Mapping[str, Tensor]
    ) -> list[tuple[nn.Parameter, Tensor, Tensor]]:
        """``(parameter, entering rows, stayed rows)`` of every target weight/bias between two masks."""
        out = []
        for t in self.targets:
            rows = t.part_rows if t.part_rows is not None else torch.arange(t.rows)  # [rows]
            enter, stay = rows[new[t.name] & ~old[t.name]], rows[new[t.name] & old[t.name]]
            out += [(p, enter, stay) for p in (t.linear.weight, t.linear.bias) if p is not None]
        return out
