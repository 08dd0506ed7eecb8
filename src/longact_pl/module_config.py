"""The grouped, typed settings of ``LongActModule`` (``conf/module/default.yaml``'s nested nodes).

Each node of ``module:`` that is not a component is one frozen dataclass here, built by Hydra from its
``_target_`` and checked once, in ``__post_init__``: ``config_check`` builds the same objects before the
model loads, so a bad value fails there naming its config path, and ``LongActModule`` receives checked ones.
The optimizer and the learning-rate schedule are components (``module.optimizer`` / ``module.scheduler``:
``_partial_`` constructors, see :mod:`longact_pl.optim`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from longact_pl.minibatch import check_token_budget
from longact_pl.ops.logprob_plan import check_options


def _at_least(path: str, value: int, low: int, note: str = "") -> None:
    if value < low:
        raise ValueError(f"{path} must be >= {low}{note}, got {value}")


@dataclass(frozen=True)
class LearnerConfig:
    """How one rollout batch becomes optimizer steps (``module.learner``; see ``longact_pl.learner.Learner``).

    Attributes:
        ppo_epochs: Optimisation passes over one rollout batch (>1 uses the stored behaviour log-probs).
        mini_batch_size: Sequences per optimizer step (0 = the whole rollout batch).
        micro_batch_size: Sequences per forward/backward (gradient accumulation inside a mini-batch).
        micro_batch_tokens: Tokens per forward/backward instead of a row count (``None``: rows).
        max_prompt_tokens: Longest prompt of the run, to check ``micro_batch_tokens`` (``None``: unchecked).
        max_grad_norm: Clip the global gradient norm to this before each optimizer step (0 = off).
    """

    ppo_epochs: int = 1
    mini_batch_size: int = 0
    micro_batch_size: int = 4
    micro_batch_tokens: int | None = None
    max_prompt_tokens: int | None = None
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        _at_least("module.learner.ppo_epochs", self.ppo_epochs, 1)
        _at_least("module.learner.mini_batch_size", self.mini_batch_size, 0, " (0 = the whole rollout batch)")
        _at_least("module.learner.micro_batch_size", self.micro_batch_size, 1)
        if self.max_grad_norm < 0:
            raise ValueError(f"module.learner.max_grad_norm must be >= 0 (0 = off), got {self.max_grad_norm}")
        if self.micro_batch_tokens is not None:  # the completion budget is checked with the rollout's
            check_token_budget(self.micro_batch_tokens, self.max_prompt_tokens, 0)


@dataclass(frozen=True)
class LogprobConfig:
    """The trainer's log-prob passes (``module.logprobs``; see ``longact_pl.ops.policy_logprobs``).

    Attributes:
        shared_prefix: Run each group's prompt once (exact; falls back per row where the model cannot).
        chunk_size: Completion tokens per LM-head chunk (``None``: one chunk).
        pack_completions: Pack a micro-batch's completions into one row: ``True`` (required), ``False``
            (padded) or ``"auto"`` (where the attention implementation allows it).
    """

    shared_prefix: bool = True
    chunk_size: int | None = 1024
    pack_completions: bool | str = False

    def __post_init__(self) -> None:
        check_options(self.shared_prefix, self.chunk_size, self.pack_completions)  # the plan's own check


@dataclass(frozen=True)
class SafetyConfig:
    """Bad steps in a row that stop the run with a checkpoint (``module.guards``; see ``longact_pl.guards``).

    Attributes:
        max_nonfinite_steps: Optimizer steps with a non-finite loss or gradient (each one skipped).
        max_skipped_steps: RL steps skipped because dynamic sampling kept no group with mixed rewards.
        max_reward_failure_steps: RL steps where the reward function raised on every completion.
        max_masked_out_steps: RL steps where the rollout correction masked out every completion token.
    """

    max_nonfinite_steps: int = 3
    max_skipped_steps: int = 10
    max_reward_failure_steps: int = 3
    max_masked_out_steps: int = 3

    def __post_init__(self) -> None:
        for name in ("max_nonfinite_steps", "max_skipped_steps", "max_reward_failure_steps",
                     "max_masked_out_steps"):  # fmt: skip
            _at_least(f"module.guards.{name}", getattr(self, name), 1)


@dataclass(frozen=True)
class ValidationConfig:
    """Greedy validation on the held-out set (``module.validation``; see ``longact_pl.eval.heldout``).

    Attributes:
        lengths: Target lengths of the held-out set (accuracy is logged per length).
        max_new_tokens: Greedy generation budget (``None``: the rollout engine's).
    """

    lengths: Sequence[int] = field(default_factory=tuple)
    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "lengths", tuple(self.lengths))
        if self.max_new_tokens is not None:
            _at_least("module.validation.max_new_tokens", self.max_new_tokens, 1)
