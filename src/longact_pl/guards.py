"""Run-level safety nets: streaks of bad steps stop a run with a checkpoint and an error saying what to do.

- :class:`NonFiniteGuard`: optimizer steps whose loss or gradient is not finite are skipped;
- skipped RL steps (DAPO's dynamic sampling kept no group) and steps where the reward function raised on
  every completion are counted by a :class:`StreakGuard` each (``LongActModule``).

Ranks agree on every count (through :class:`~longact_pl.distributed.DistOps`), so they all stop at the same
step, together, after writing the same checkpoint.
"""

from __future__ import annotations

import torch

from longact_pl.distributed import DistOps


class NonFiniteError(RuntimeError):
    """Raised after too many consecutive non-finite steps (a checkpoint has been written)."""


class SkippedStepsError(RuntimeError):
    """Raised after too many consecutive skipped RL steps (a checkpoint has been written)."""


class RewardFunctionError(RuntimeError):
    """Raised after too many consecutive steps whose every reward call failed (a checkpoint is written)."""


class StreakGuard:
    """Counts bad steps in a row (and in total); ``max_consecutive`` in a row exhaust it.

    Args:
        max_consecutive: Bad steps in a row that stop the run.
        field: The config field that sets ``max_consecutive`` (for messages).
    """

    def __init__(self, max_consecutive: int, field: str) -> None:
        if max_consecutive < 1:
            raise ValueError(f"{field} must be >= 1, got {max_consecutive}")
        self.max_consecutive, self.field = max_consecutive, field
        self.consecutive = 0
        self.total = 0

    def record(self, bad: bool, dist: DistOps | None = None) -> bool:
        """Record one step; returns whether it counted as bad.

        Args:
            bad: Whether the step was bad on this rank.
            dist: Data-parallel collectives: the step counts as bad only if it was bad on every rank, so the
                counters (and the stop) are the same everywhere. ``None``: a single process.
        """
        if dist is not None:
            bad = bool(dist.min(int(bad)))
        if bad:
            self.consecutive += 1
            self.total += 1
        else:
            self.consecutive = 0
        return bad

    @property
    def exhausted(self) -> bool:
        """Too many bad steps in a row."""
        return self.consecutive >= self.max_consecutive

    def state_dict(self) -> dict[str, int]:
        """Counters, for checkpoints."""
        return {"consecutive": self.consecutive, "total": self.total}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore counters."""
        self.consecutive, self.total = int(state["consecutive"]), int(state["total"])


class NonFiniteGuard(StreakGuard):
    """Decide whether an optimizer step may run, from the global gradient norm.

    A step whose loss or gradient norm is NaN/inf is skipped (no optimizer update, so weights, optimizer
    state and LongAct masks are untouched); ``max_consecutive`` skips in a row stop the run.

    Args:
        max_consecutive: Skipped steps in a row that stop the run.
    """

    def __init__(self, max_consecutive: int = 3) -> None:
        super().__init__(max_consecutive, "module.max_nonfinite_steps")

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
            finite = bool(dist.min(int(finite)))  # finite on every rank: skipped when any rank is not
        return not self.record(not finite)

    def error(self, checkpoint: object) -> NonFiniteError:
        """The error that stops the run once :attr:`exhausted` (``checkpoint``: where the state was saved)."""
        return NonFiniteError(
            f"{self.consecutive} optimizer steps in a row had a non-finite loss or gradient; stopped and "
            f"saved {checkpoint}. Lower module.lr, check the reward function, or raise "
            "module.max_nonfinite_steps."
        )


def skipped_steps_error(guard: StreakGuard, max_gen_rounds: int, checkpoint: object) -> SkippedStepsError:
    """The error that stops a run whose dynamic sampling kept no group for ``guard.consecutive`` steps."""
    return SkippedStepsError(
        f"{guard.consecutive} RL steps in a row were skipped: DAPO's dynamic sampling kept no group with "
        f"mixed rewards after algo.max_gen_rounds={max_gen_rounds} generation rounds each (every completion "
        "of a prompt got the same reward: the task is too hard or too easy for the model). Stopped and saved "
        f"{checkpoint}. Train on easier or harder data (e.g. other data.train.lengths), raise "
        f"algo.max_gen_rounds or rollout.group_size, set algo.dynamic_sampling=false, or raise {guard.field}."
    )


def reward_function_error(
    guard: StreakGuard, first_error: str | None, checkpoint: object
) -> RewardFunctionError:
    """The error that stops a run whose reward function raised on every completion of the last steps.

    Raise it ``from`` the first exception, so its traceback is printed too.
    """
    return RewardFunctionError(
        f"the reward function raised on every completion of {guard.consecutive} RL steps in a row, so every "
        f"reward was 0 and nothing was learned; stopped and saved {checkpoint}. First error: {first_error}. "
        f"Fix the reward function (data.reward; its traceback is above), or raise {guard.field}."
    )
