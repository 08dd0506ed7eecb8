"""The ``premise:`` section of ``conf/premise.yaml``, validated once before the model is loaded."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class PremiseOptions:
    """What the premise tool measures and how (each field is described in ``conf/premise.yaml``).

    Raises:
        ValueError: On any invalid value, naming the ``premise.<field>`` and the fix.
    """

    lengths: tuple[int, ...]
    items: int
    build_items: int
    m3_items: int
    random_masks: int
    m3_lrs: tuple[float, ...]
    item_seed: int
    calib_seed: int
    precision: str
    device: str
    threads: int
    n_boot: int
    target_half_width: float

    def __post_init__(self) -> None:
        if len(self.lengths) != 2 or not 0 < self.lengths[0] < self.lengths[1]:
            raise ValueError(
                f"premise.lengths={list(self.lengths)} must be two increasing lengths [short, long], "
                "e.g. [256, 2048]"
            )
        if not 1 <= self.build_items < self.items:
            raise ValueError(
                f"premise.build_items={self.build_items} must be in [1, premise.items - 1] "
                f"(premise.items={self.items}): the rest are the held-out items"
            )
        held = self.items - self.build_items
        if not 0 <= self.m3_items <= held:
            raise ValueError(f"premise.m3_items={self.m3_items} must be in [0, {held}] (the held-out items)")
        if self.random_masks < 1:
            raise ValueError(f"premise.random_masks={self.random_masks} must be >= 1")
        if any(lr < 0 for lr in self.m3_lrs):
            raise ValueError(f"premise.m3_lrs={list(self.m3_lrs)} must be >= 0")
        if self.precision not in PRECISIONS:
            raise ValueError(f"premise.precision={self.precision!r}; use one of {list(PRECISIONS)}")
        if self.device not in DEVICES:
            raise ValueError(f"premise.device={self.device!r}; use one of {list(DEVICES)}")
        if self.threads < 0 or self.n_boot < 100 or not 0 < self.target_half_width < 1:
            raise ValueError(
                "premise.threads must be >= 0, premise.n_boot >= 100, target_half_width in (0, 1)"
            )
        if abs(self.item_seed - self.calib_seed) < self.items:
            raise ValueError(
                f"premise.item_seed={self.item_seed} and premise.calib_seed={self.calib_seed} overlap within "
                f"{self.items} items: calibration prompts would be measured items; move one of them"
            )

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> PremiseOptions:
        """Build from the config section (lists become tuples).

        Raises:
            ValueError: On unknown or missing fields.
        """
        names = {f.name for f in fields(cls)}
        unknown, missing = set(raw) - names, names - set(raw)
        if unknown or missing:
            raise ValueError(f"premise: unknown fields {sorted(unknown)}, missing fields {sorted(missing)}")
        vals = dict(raw)
        vals["lengths"] = tuple(int(x) for x in vals["lengths"])
        vals["m3_lrs"] = tuple(float(x) for x in vals["m3_lrs"])
        return cls(**vals)

    @property
    def short(self) -> int:
        """The short length."""
        return self.lengths[0]

    @property
    def long(self) -> int:
        """The long length."""
        return self.lengths[-1]
