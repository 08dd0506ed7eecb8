"""longact_pl: long-context RL (GRPO, DAPO, Dr. GRPO) with LongAct saliency-guided sparse updates."""

__version__ = "0.1.0"
