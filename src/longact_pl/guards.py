"""Run-level safety nets: skip optimizer steps whose gradients are not finite, stop after a streak."""

from __future__ import annotations

import torch

from longact_pl.distributed import DistOps


class NonFiniteError(RuntimeError):
    """Raised after too many consecutive non-finite steps (a checkpoint has been written)."""


class NonFiniteGuard:
    """Decide whether an optimizer step may run, from the global gradient norm.

    A step whose loss or gradient norm is NaN/inf is skipped (no optimizer update, so weights, optimizer
    state and LongAct masks are untouched); ``max_consecutive`` skips in a row stop the run.

    Args:
        max_consecutive: Skipped steps in a row that stop the run.
    """

    def __init__(self, max_consecutive: int = 3) -> None:
        if max_consecutive < 1:
            raise ValueError(f"module.max_nonfinite_steps must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total = 0

    @staticmethod
    def grad_norm(params) -> torch.Tensor:
        """Global L2 norm of the gradients that exist (0 when there are none)."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return torch.zeros(())
        norms = torch._foreach_norm(grads)  # one scalar per tensor
        return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))

    def allow(self, loss_sum: float, norm: torch.Tensor, dist: DistOps | None = None) -> bool:
        """Record one step; ``True`` if it may update the weights.

        Args:
            loss_sum: This rank's loss of the step.
            norm: Gradient norm.
            dist: Data-parallel collectives: the step runs only if it is finite on every rank, so ranks never
                disagree on skipping (or on stopping with a checkpoint). ``None``: a single process.
        """
        finite = bool(torch.isfinite(norm)) and bool(torch.isfinite(torch.tensor(loss_sum)))
        if dist is not None:
            finite = bool(dist.min(int(finite)))
        if finite:
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.total += 1
        return False

    @property
    def exhausted(self) -> bool:
        """Too many non-finite steps in a row."""
        return self.consecutive >= self.max_consecutive

    def error(self, checkpoint: object) -> NonFiniteError:
        """The error that stops the run once :attr:`exhausted` (``checkpoint``: where the state was saved)."""
        return NonFiniteError(
            f"{self.consecutive} optimizer steps in a row had a non-finite loss or gradient; stopped and "
            f"saved {checkpoint}. Lower module.lr, check the reward function, or raise "
            "module.max_nonfinite_steps."
        )

    def state_dict(self) -> dict[str, int]:
        """Counters, for checkpoints."""
        return {"consecutive": self.consecutive, "total": self.total}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore counters."""
        self.consecutive, self.total = int(state["consecutive"]), int(state["total"])
