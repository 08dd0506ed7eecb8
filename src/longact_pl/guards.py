"""Run-level safety nets: streaks of bad steps stop a run with a checkpoint and an error saying what to do.

- :class:`NonFiniteGuard`: optimizer steps whose loss or gradient is not finite are skipped;
- skipped RL steps (DAPO's dynamic sampling kept no group), steps where the reward function raised on
  every completion and steps where the rollout correction masked out every token are counted by a
  :class:`StreakGuard` each;
- :class:`SafetyStops` holds the three for ``LongActModule``: what to log, when to stop, which checkpoint
  to write first, and the counters a resume restores.

Ranks agree on every count (through :class:`~longact_pl.distributed.DistOps`), so they all stop at the same
step, together, after writing the same checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from longact_pl.distributed import DistOps

log = logging.getLogger(__name__)

# Writes ``checkpoints/<name>`` and returns its path (every rank calls it: the ranks agree to stop).
SaveCheckpoint = Callable[[str], Path]


class NonFiniteError(RuntimeError):
    """Raised after too many consecutive non-finite steps (a checkpoint has been written)."""


class SkippedStepsError(RuntimeError):
    """Raised after too many consecutive skipped RL steps (a checkpoint has been written)."""


class RewardFunctionError(RuntimeError):
    """Raised after too many consecutive steps whose every reward call failed (a checkpoint is written)."""


class MaskedOutError(RuntimeError):
    """Raised after too many consecutive steps whose every token the rollout correction masked out."""


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
        super().__init__(max_consecutive, "module.guards.max_nonfinite_steps")

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
            f"saved {checkpoint}. Lower module.optimizer.lr, check the reward function, or raise "
            "module.guards.max_nonfinite_steps."
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


def masked_out_error(guard: StreakGuard, checkpoint: object) -> MaskedOutError:
    """The error that stops a run whose rollout correction gave every token weight 0 for several steps."""
    return MaskedOutError(
        f"the rollout correction masked out every completion token of {guard.consecutive} RL steps in a row "
        f"(train/correction/token_masked_frac = 1), so the loss and the gradient were 0 and nothing was "
        f"learned; stopped and saved {checkpoint}. Widen correction.low / correction.high or "
        f"correction.reject_low / correction.reject_high (see train/correction/log_ratio_abs_mean), or raise "
        f"{guard.field}."
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


class SafetyStops:
    """The run's three streak counters and what each does when a streak grows too long.

    Args:
        max_nonfinite_steps: Consecutive non-finite optimizer steps (skipped) that stop the run.
        max_skipped_steps: Consecutive RL steps skipped by dynamic sampling that stop the run.
        max_reward_failure_steps: Consecutive RL steps whose every reward call raised that stop the run.
        max_masked_out_steps: Consecutive RL steps whose every token the rollout correction masked out.
        max_gen_rounds: Dynamic sampling's generation rounds per step (for the skipped-steps message).
    """

    def __init__(
        self,
        max_nonfinite_steps: int = 3,
        max_skipped_steps: int = 10,
        max_reward_failure_steps: int = 3,
        max_gen_rounds: int = 1,
        max_masked_out_steps: int = 3,
    ) -> None:
        self.nonfinite = NonFiniteGuard(max_nonfinite_steps)
        self.skipped = StreakGuard(max_skipped_steps, "module.guards.max_skipped_steps")
        self.reward_failed = StreakGuard(max_reward_failure_steps, "module.guards.max_reward_failure_steps")
        self.masked_out = StreakGuard(max_masked_out_steps, "module.guards.max_masked_out_steps")
        self.max_gen_rounds = max_gen_rounds
        self._reward_streak_first: tuple[str, Exception] | None = None

    def on_nonfinite_step(self, save: SaveCheckpoint) -> None:
        """After a skipped non-finite optimizer step: warn; too many in a row: save, then raise."""
        log.warning(
            "non-finite loss or gradient: optimizer step skipped (%d in a row)", self.nonfinite.consecutive
        )
        if self.nonfinite.exhausted:
            raise self.nonfinite.error(save("nonfinite.ckpt"))

    def on_skipped_step(self, save: SaveCheckpoint, step_text: str | None) -> None:
        """After an RL step that dynamic sampling skipped: print it; too many in a row: save, then raise.

        Args:
            save: Writes the stop checkpoint.
            step_text: The step log's ``step k/n`` (``None`` on ranks that do not print).
        """
        if step_text is not None:
            log.info(
                "%s skipped: dynamic sampling kept no group with mixed rewards (%d in a row, %d in total)",
                step_text, self.skipped.consecutive, self.skipped.total,
            )  # fmt: skip
        if self.skipped.exhausted:
            raise skipped_steps_error(self.skipped, self.max_gen_rounds, save("skipped.ckpt"))

    def check_rewards(self, step_all_failed: bool, step_first, dist: DistOps, save: SaveCheckpoint) -> None:
        """Count a step whose every reward call raised (on every rank); too many in a row: save, then raise.

        Args:
            step_all_failed: Whether every reward call of this rank's step raised.
            step_first: This step's first failure, ``(text, exception)``.
            dist: The ranks agree on counting the step (every rank failed).
            save: Writes the stop checkpoint.
        """
        if not self.reward_failed.record(step_all_failed, dist):
            return
        if self.reward_failed.consecutive == 1:  # the streak starts: keep its first error (and traceback)
            self._reward_streak_first = step_first
        if self.reward_failed.exhausted:  # (a run resumed mid-streak: this step's first error)
            text, err = self._reward_streak_first or step_first
            raise reward_function_error(self.reward_failed, text, save("reward_errors.ckpt")) from err

    def check_masked_out(self, masked_frac: float | None, dist: DistOps, save: SaveCheckpoint) -> None:
        """Count a step whose every completion token got weight 0 (on every rank); too many: save, raise.

        Args:
            masked_frac: The step's ``train/correction/token_masked_frac`` (``None``: no active correction).
            dist: The ranks agree on counting the step.
            save: Writes the stop checkpoint.
        """
        self.masked_out.record(masked_frac is not None and masked_frac >= 1.0, dist)
        if self.masked_out.exhausted:
            raise masked_out_error(self.masked_out, save("masked_out.ckpt"))

    def _guards(self) -> dict[str, StreakGuard]:
        """The counters by checkpoint prefix (names kept from earlier checkpoints)."""
        return {
            "guard": self.nonfinite,
            "skipped": self.skipped,
            "reward_failed": self.reward_failed,
            "masked_out": self.masked_out,
        }

    def state_dict(self) -> dict[str, int]:
        """Counters for a checkpoint: ``<guard>_consecutive`` and ``<guard>_total``."""
        return {f"{n}_{k}": v for n, g in self._guards().items() for k, v in g.state_dict().items()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict`'s counters (missing ones: 0, as in a checkpoint from before them)."""
        for name, guard in self._guards().items():
            guard.load_state_dict({k: int(state.get(f"{name}_{k}", 0)) for k in ("consecutive", "total")})
