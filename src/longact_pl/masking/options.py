"""The masking options of a run: validated once, recorded with the masks, compared on resume."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from longact_pl.masking.fused import FUSED_NAMES
from longact_pl.masking.pairing import check_pairing
from longact_pl.masking.selection import check_scope
from longact_pl.masking.stats import check_statistic
from longact_pl.masking.targets import MEASURE_AT, ROLES

OTHERS = ("dense", "frozen")
NORMS = ("dense", "frozen")


def _choice(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"masking.{field}={value!r} is not supported; use one of {list(allowed)}")


@dataclass(frozen=True)
class MaskingOptions:
    """Everything that decides which rows are trained (see ``conf/masking/saliency.yaml`` for each field).

    ``selector`` is the selector's class name, ``unit`` the unit's ``name`` (``channel``, ``rope_pair``...);
    the unit itself checks ``measure_at`` (``SelectionUnit.check``).

    Raises:
        ValueError: On any invalid value or combination, naming the ``masking.<field>``.
    """

    selector: str
    targets: tuple[str, ...]
    ratio: float
    statistic: str
    unit: str
    scope: str
    pairing: str
    norms: str
    others: str
    measure_at: str
    calib_samples: int
    refresh_every: int
    ema: float
    seed: int
    calib_min_tokens: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"masking.ratio={self.ratio} must be in (0, 1]")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"masking.ema={self.ema} must be in [0, 1)")
        if self.calib_samples < 1 or self.refresh_every < 0 or self.calib_min_tokens < 0:
            raise ValueError(
                "masking.calib_samples must be >= 1, masking.refresh_every >= 0 and "
                "masking.calib_min_tokens >= 0"
            )
        if not self.targets:
            raise ValueError("masking.targets is empty; name at least one projection (e.g. [q_proj, k_proj])")
        check_statistic(self.statistic)
        if not isinstance(self.unit, str) or not self.unit:
            raise ValueError(f"masking.unit must be the unit's name (SelectionUnit.name), got {self.unit!r}")
        check_scope(self.scope)
        check_pairing(self.pairing, self.targets)
        _choice("others", self.others, OTHERS)
        _choice("norms", self.norms, NORMS)
        _choice("measure_at", self.measure_at, MEASURE_AT)
        qk = set(ROLES) | set(FUSED_NAMES)
        if self.measure_at == "post_rope" and any(t.rpartition(".")[2] not in qk for t in self.targets):
            raise ValueError(
                f"masking.measure_at=post_rope measures queries and keys as attention reads them, but "
                f"masking.targets={list(self.targets)} names other projections; use masking.measure_at=proj"
            )

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable fields (targets as a list)."""
        out = asdict(self)
        out["targets"] = list(self.targets)
        return out

    def changed(self, saved: Mapping[str, Any], ignore: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
        """Fields whose value differs from ``saved`` (not compared: fields ``saved`` lacks, or in ``ignore``).

        Returns:
            Field -> ``(saved value, current value)``.
        """
        now = self.as_dict()
        return {
            f.name: (saved[f.name], now[f.name])
            for f in fields(self)
            if f.name in saved and f.name not in ignore and _norm(saved[f.name]) != _norm(now[f.name])
        }

    def check_resume(self, saved: Mapping[str, Any], ignore: tuple[str, ...] = ()) -> None:
        """Refuse to resume masks built with other options (``saved``: the checkpoint's :meth:`as_dict`).

        Raises:
            ValueError: Naming each changed field and the two ways out.
        """
        changed = self.changed(saved, ignore)
        if changed:
            diff = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ValueError(
                f"masking: the checkpoint's masks were built with other options ({diff}); resuming would "
                "train them under this run's labels. Resume with the same masking options, or set "
                "masking.rebuild_masks=true to build new masks at the resumed step (mask_summary.json then "
                "describes the new masks)"
            )


def _norm(value: Any) -> Any:
    """Compare lists and tuples alike."""
    return list(value) if isinstance(value, (list, tuple)) else value
