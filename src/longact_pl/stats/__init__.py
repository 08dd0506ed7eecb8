"""Statistics for comparing runs: bootstrap confidence intervals of paired differences."""

from longact_pl.stats.bootstrap import Interval, paired_ci

__all__ = ["Interval", "paired_ci"]
