"""Position ids of left-padded rows (pure function)."""

from __future__ import annotations

import torch


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, matching what ``generate`` uses: ``[N, L] -> [N, L]``."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [N, L]
