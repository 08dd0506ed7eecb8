"""The policy's optimizer, its learning-rate schedule, and one optimizer step."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def check_optimizer_settings(lr: float, warmup_steps: int) -> None:
    """Raise ``ValueError`` naming ``module.lr`` / ``module.warmup_steps`` for values out of range."""
    if warmup_steps < 0:
        raise ValueError(f"module.warmup_steps must be >= 0, got {warmup_steps}")
    if lr <= 0:
        raise ValueError(f"module.lr must be > 0, got {lr}")


def adamw_with_warmup(
    params: Iterable[torch.nn.Parameter],
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    warmup_steps: int,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW and a linear warm-up over ``warmup_steps`` optimizer steps (constant afterwards).

    Step ``s`` (0-based) runs at ``lr * min(1, (s + 1) / warmup_steps)``.
    """
    opt = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    warm = max(1, warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warm))
    return opt, sched


def optimizer_step(optimizer, scheduler) -> None:
    """Step the optimizer, drop autocast's cached low-precision weights, step the schedule.

    Autocast caches the bf16 copy of each weight for its whole region, which spans a training step: with
    several optimizer steps per RL step (``ppo_epochs > 1`` or mini-batches) later forwards would otherwise
    run on the weights from before the update.
    """
    optimizer.step()
    torch.clear_autocast_cache()
    scheduler.step()
