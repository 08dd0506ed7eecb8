"""LongAct: saliency-guided sparse updates of the query/key projections (a Lightning callback)."""

from longact_pl.masking.callback import SaliencyMask
from longact_pl.masking.selection import BottomK, RandomK, TopK
from longact_pl.masking.units import Channel, Head, RopePair, SelectionUnit

__all__ = ["BottomK", "Channel", "Head", "RandomK", "RopePair", "SaliencyMask", "SelectionUnit", "TopK"]
