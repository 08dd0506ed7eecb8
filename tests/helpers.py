"""Test-only components referenced by ``_target_`` from test configs."""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from longact_pl.rollout.hf import HFRollout

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# A tiny, fast setting of the whole stack: tiny Llama, 256-token prompts, 8-token completions.
TINY = [
    "model=tiny_llama",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.precision=32-true",
    "data.train.lengths=[256]",
    "data.val.lengths=[256]",
    "data.val.num_samples=2",
    "rollout.max_new_tokens=8",
    "rollout.group_size=4",
    "module.optimizer.lr=1e-3",
    "validate_before_training=false",
]

# For runs that do not test checkpointing: a SmolLM2 last.ckpt (policy + AdamW state) is 1.6 GB on disk.
NO_CKPT = "callbacks.model_checkpoint.save_last=false"


def child_env() -> dict[str, str]:
    """Environment of a ``train.py`` subprocess: imports this checkout's ``src`` and ``tests`` (not whatever
    ``longact_pl`` the interpreter has installed, e.g. another worktree's)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}


class ParityReward:
    """Reward = parity of the completion's CRC32: distinct completions get mixed, reproducible rewards."""

    def __call__(self, completions: list[str], references: list[list[str]], **meta) -> list[float]:
        return [float(zlib.crc32(c.encode()) % 2) for c in completions]


class HalfUniformReward:
    """0 for every completion of a prompt whose first reference has an even CRC32 (a uniform group, which
    DAPO's dynamic sampling drops), else :class:`ParityReward` (mixed groups)."""

    def __call__(self, completions: list[str], references: list[list[str]], **meta) -> list[float]:
        return [
            float(zlib.crc32(refs[0].encode()) % 2 == 1 and zlib.crc32(c.encode()) % 2 == 1)
            for c, refs in zip(completions, references)
        ]


def compose_train(output_dir: Path, *overrides: str, tiny: bool = True) -> DictConfig:
    """Compose ``conf/train.yaml`` as ``train.py`` would, with the run directory set to ``output_dir``."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "train", overrides=[f"paths.output_dir={output_dir}", *(TINY if tiny else []), *overrides]
        )


class NaNReward:
    """NaN rewards for the first ``bad_calls`` training calls (a non-finite loss), then parity rewards."""

    calls = 0

    def __init__(self, bad_calls: int = 1) -> None:
        self.bad_calls = bad_calls

    def __call__(self, completions: list[str], references: list[list[str]], **meta) -> list[float]:
        NaNReward.calls += 1
        if NaNReward.calls <= self.bad_calls:
            return [float("nan")] * len(completions)
        return ParityReward()(completions, references)


class RaisingReward:
    """Raises on any batch holding a completion whose CRC32 is divisible by 3; else parity rewards."""

    def __call__(self, completions: list[str], references: list[list[str]], **meta) -> list[float]:
        if any(zlib.crc32(c.encode()) % 3 == 0 for c in completions):
            raise ZeroDivisionError("bad completion")
        return ParityReward()(completions, references)


class BrokenReward:
    """Raises on every call (a reward server that is down)."""

    def __call__(self, completions: list[str], references: list[list[str]], **meta) -> list[float]:
        raise ConnectionError("reward server down")


class SigtermAt:
    """A callback that sends this process SIGTERM once ``step`` optimizer steps are done (a pre-emption)."""

    def __new__(cls, step: int):
        import os
        import signal

        import lightning as L

        class _Sigterm(L.Callback):
            def on_train_batch_end(self, trainer, *args) -> None:
                if trainer.global_step == step and not trainer.received_sigterm:
                    os.kill(os.getpid(), signal.SIGTERM)

        return _Sigterm()


class FakeOps:
    """A ``DistOps`` for unit tests: this rank plus scripted other ranks, no processes.

    ``min(value)`` returns ``min(value, next(other_mins))`` (the value itself once the script ends),
    ``sum(tensor)`` returns ``tensor + next(other_sums)`` (the tensor itself once it ends), ``max(tensor)``
    the elementwise maximum with ``next(other_maxes)`` (the tensor itself once it ends) and ``share(value)``
    ``next(shares)`` (the first rank of a sequence-parallel group's value; ``value`` itself once the script
    ends), ``gather(obj)`` ``obj`` then ``next(other_gathers)`` (``world_size`` copies of ``obj`` once the
    script ends); every min, sum, max and gather call's input is recorded.
    """

    def __init__(
        self,
        world_size: int = 1,
        other_mins: Iterable[int] = (),
        other_sums: Iterable = (),
        other_maxes: Iterable = (),
        shares: Iterable = (),
        other_gathers: Iterable = (),
    ) -> None:
        self.world_size = world_size
        self.sequence_parallel = None  # no sequence-parallel group: the log-prob passes run whole
        self._gathers = iter(other_gathers)
        self.gather_calls: list = []
        self._mins, self._sums, self._maxes = iter(other_mins), iter(other_sums), iter(other_maxes)
        self._shares = iter(shares)
        self.min_calls: list[int] = []
        self.sum_calls: list = []
        self.max_calls: list = []

    def min(self, value: int) -> int:
        """Minimum of this rank's value and the next scripted one."""
        self.min_calls.append(value)
        return min(value, next(self._mins, value))

    def sum(self, tensor):
        """This rank's tensor plus the next scripted one."""
        self.sum_calls.append(tensor.clone())
        other = next(self._sums, None)
        return tensor if other is None else tensor + other

    def max(self, tensor):
        """Elementwise maximum of this rank's tensor and the next scripted one."""
        self.max_calls.append(tensor.clone())
        other = next(self._maxes, None)
        return tensor if other is None else torch.maximum(tensor, torch.as_tensor(other))

    def share(self, value):
        """The next scripted value (another rank is first in the group), else the value itself."""
        return next(self._shares, value)

    def gather(self, obj):
        """This rank's object, then the next scripted list of the other ranks' objects (or copies of it)."""
        self.gather_calls.append(obj)
        others = next(self._gathers, None)
        return [obj, *others] if others is not None else [obj] * self.world_size


class VLLMStandIn(HFRollout):
    """``rollout=hf_shared`` taking ``rollout=vllm``'s settings (the engine ones ignored): presets on CPU.

    It stands in for an external sampler, so the presets' rollout correction applies (its ratios are 1).
    """

    external = True

    def __init__(
        self, dtype=None, max_model_len=None, kv_cache_gib=None, gpu_memory_utilization=None,
        enforce_eager=None, weight_sync=None, bucket_mb=None, sync_dir=None, sleep_level=None,
        engine_kwargs=None, **kwargs,
    ) -> None:  # fmt: skip
        super().__init__(**{"prefill_once": True, **kwargs})


class InterruptReward:
    """Parity rewards, but the ``at_call``-th training call raises ``KeyboardInterrupt`` (Ctrl-C mid-step)."""

    calls = 0

    def __init__(self, at_call: int = 3) -> None:
        self.at_call = at_call

    def __call__(self, completions: list[str], references: list[list[str]], **meta) -> list[float]:
        InterruptReward.calls += 1
        if InterruptReward.calls == self.at_call:
            raise KeyboardInterrupt
        return ParityReward()(completions, references)


class SigtermInValidation:
    """A callback that sends this process SIGTERM during the step-0 validation (before training)."""

    def __new__(cls):
        import os
        import signal

        import lightning as L

        class _Sigterm(L.Callback):
            def on_validation_batch_end(self, trainer, *args) -> None:
                if trainer.global_step == 0 and not trainer.received_sigterm:
                    os.kill(os.getpid(), signal.SIGTERM)

        return _Sigterm()


class UniformThenParity:
    """0 for every completion of the first ``uniform_calls`` calls (DAPO skips the step), then parity."""

    calls = 0

    def __init__(self, uniform_calls: int = 1) -> None:
        self.uniform_calls = uniform_calls

    def __call__(self, completions: list[str], references: list[list[str]], **meta) -> list[float]:
        UniformThenParity.calls += 1
        if UniformThenParity.calls <= self.uniform_calls:
            return [0.0] * len(completions)
        return ParityReward()(completions, references)
