"""Rollout engines: produce G sampled completions per prompt with behaviour log-probs."""

from longact_pl.rollout.types import RolloutBatch, RolloutEngine

__all__ = ["RolloutBatch", "RolloutEngine"]
