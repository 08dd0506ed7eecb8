"""LongAct: saliency-guided sparse updates of the query/key projections (a Lightning callback)."""

from longact_pl.masking.callback import SaliencyMask
from longact_pl.masking.selection import BottomK, RandomK, TopK, build_masks

__all__ = ["BottomK", "RandomK", "SaliencyMask", "TopK", "build_masks"]
