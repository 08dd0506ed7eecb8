"""Memory plan: per-rank peak memory of a training step, predicted from the config before anything loads."""

from longact_pl.memory.plan import MemoryPlan, Settings, Term, plan_memory
from longact_pl.memory.shapes import ModelShape

__all__ = ["MemoryPlan", "ModelShape", "Settings", "Term", "plan_memory"]
