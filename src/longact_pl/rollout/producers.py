"""The async sampler of each ``rollout.placement``, behind one interface.

* ``colocated``: :class:`~longact_pl.rollout.async_loop.AsyncRollouts`, a thread of the trainer's process
  sampling with a copy of the policy;
* ``disaggregated``: :class:`~longact_pl.rollout.async_remote.RemoteRollouts`, an engine process per
  trainer rank, weights pushed over the collective backend.
"""

from __future__ import annotations

from typing import Protocol

from torch import nn

from longact_pl.rollout.async_buffer import VersionedRollout
from longact_pl.rollout.async_loop import AsyncRollouts, AsyncSettings
from longact_pl.rollout.async_remote import RemoteRollouts


class Producer(Protocol):
    """What the training step needs of an async sampler, whatever its placement.

    Batches are requested by index (:meth:`submit`, batch ``j`` is trained at version ``j``), taken in index
    order (:meth:`take`, waiting; the lag checked against ``max_staleness``), and the trainer publishes
    its weights after every RL step (:meth:`publish`). :class:`AsyncRollouts` is the colocated one.
    """

    busy_s: float  # seconds spent generating

    @property
    def version(self) -> int:
        """The newest published version."""

    def submit(self, index: int, prompts: list[list[int]], seed: int) -> None:
        """Request batch ``index`` of ``prompts`` sampled with ``seed`` (again: ignored)."""

    def take(self, index: int, prompts: list[list[int]], seed: int) -> VersionedRollout:
        """Batch ``index``, waiting for it (raises ``EngineFailure`` / ``StalenessError``)."""

    def publish(self, policy: nn.Module) -> int:
        """Publish ``policy``'s weights as the next version; returns it."""

    def close(self, wait_s: float = 60.0) -> None:
        """Stop sampling; batches not taken are dropped."""


def make_rollouts(
    engine, tokenizer, policy: nn.Module, settings: AsyncSettings, start_version: int = 0
) -> Producer:
    """The producer of ``settings.placement``.

    :class:`AsyncRollouts` (colocated: a thread with a policy copy) or
    :class:`~longact_pl.rollout.async_remote.RemoteRollouts` (disaggregated: an engine process).
    """
    if settings.placement == "disaggregated":
        return RemoteRollouts(engine, tokenizer, policy, settings, start_version)
    return AsyncRollouts(engine, tokenizer, policy, settings, start_version)
