"""The trainer ranks of a tensor-parallel group share one rollout engine: its leader samples for all of them.

With ``rollout.engine_kwargs.tensor_parallel_size`` = t >= 2 one engine serves each group of t consecutive
trainer ranks of a node, on their t GPUs (``rollout/placement.py``); only the group's leader (its first
rank) starts it, as the hybrid engines of verl / NeMo-RL do. At every rollout (:func:`shared_generate`):

1. every rank hands its cached GPU blocks back (the engine's TP workers run on all the group's GPUs) and
   sends its :class:`Call` s (prompts, per-prompt seeds, sampling settings) to the leader: a gather over the
   group's process subgroup;
2. the leader starts or wakes the engine and tells the group whether the weights must be pushed; if so,
   every rank takes part in the push (the FSDP all-gathers are collectives over all ranks) and the leader
   alone writes into the engine;
3. the leader runs the group's calls in one engine call (a call asked by several ranks runs once: same
   prompt, seed and settings give the same samples), puts the engine to sleep and sends each rank its own
   :class:`Sample` s: a scatter;
4. each rank builds its batch from its samples with the shared output builder, as if it had sampled alone.

A prompt's seed depends on the run seed and the prompt's tokens only (``rollout.vllm.prompt_seed``), so the
samples a rank gets do not depend on the other prompts of the engine call (up to the engine's batch
numerics, as for any change of batch size). An error on the leader reaches every rank of the group, which
raises it instead of waiting. The exchange knows no engine: the collectives come in as a :class:`ShareGroup`
and the engine as an :class:`EngineSide`, so it is tested on CPU with gloo and a stand-in engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch.distributed as dist

from longact_pl.rollout.placement import engine_of, place_engines


@dataclass(frozen=True)
class Call:
    """One prompt to sample, with everything the engine needs (picklable; equal calls give equal samples).

    Attributes:
        prompt: Prompt token ids.
        seed: Its sampling seed (ignored when greedy).
        n: Completions to sample.
        greedy: Greedy decoding.
        max_tokens: Completion budget.
        stop_ids: Token ids that end a completion.
    """

    prompt: tuple[int, ...]
    seed: int
    n: int
    greedy: bool
    max_tokens: int
    stop_ids: tuple[int, ...]


@dataclass(frozen=True)
class Sample:
    """One completion as the engine returned it: what the output builder needs.

    Attributes:
        token_ids: Completion token ids (up to and including a stop token, or the budget).
        logprobs: The sampler's log-prob of each of them.
    """

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]


class ShareGroup(Protocol):
    """The collectives of one TP group; member 0 is the leader. Every member calls each method, in order."""

    size: int
    rank: int

    def gather(self, obj: Any) -> list[Any] | None:
        """Every member's ``obj`` in member order on the leader; ``None`` elsewhere."""
        ...

    def scatter(self, objs: list[Any] | None) -> Any:
        """Member ``i`` gets ``objs[i]`` (given by the leader; ``None`` elsewhere)."""
        ...


class SoloGroup:
    """A group of one (TP = 1, or a single process): no communication."""

    size = 1
    rank = 0

    def gather(self, obj: Any) -> list[Any]:
        """``[obj]``."""
        return [obj]

    def scatter(self, objs: list[Any] | None) -> Any:
        """``objs[0]``."""
        return objs[0]


class TorchGroup:
    """A TP group as a ``torch.distributed`` process group (object collectives; gloo: CPU, no GPU memory).

    Args:
        group: The process group of the members.
        ranks: Their global ranks, leader first.
    """

    def __init__(self, group: Any, ranks: tuple[int, ...]) -> None:
        self.group, self.ranks = group, tuple(ranks)
        self.size = len(self.ranks)
        self.rank = self.ranks.index(dist.get_rank())

    def gather(self, obj: Any) -> list[Any] | None:
        """``torch.distributed.gather_object`` to the leader."""
        out: list[Any] | None = [None] * self.size if self.rank == 0 else None
        dist.gather_object(obj, out, group=self.group, group_dst=0)
        return out

    def scatter(self, objs: list[Any] | None) -> Any:
        """``torch.distributed.scatter_object_list`` from the leader."""
        box: list[Any] = [None]
        dist.scatter_object_list(box, objs if self.rank == 0 else None, group=self.group, group_src=0)
        return box[0]


def tp_share_group(tensor_parallel_size: int, ranks_per_node: int) -> ShareGroup:
    """The TP group of this rank (a collective unless a :class:`SoloGroup`: every rank calls it at once).

    Args:
        tensor_parallel_size: The engine's TP size (ranks per engine).
        ranks_per_node: Trainer processes per node (a group stays within a node).

    Raises:
        ValueError: From :func:`~longact_pl.rollout.placement.place_engines`, naming the setting, when the
            sizes do not divide.
    """
    if tensor_parallel_size == 1 or not dist.is_initialized() or dist.get_world_size() == 1:
        return SoloGroup()
    # one GPU per rank is checked where the engine starts (``rollout/vllm_engine.py``); here only ranks count
    engines = place_engines(dist.get_world_size(), ranks_per_node, ranks_per_node, tensor_parallel_size)
    mine, _ = dist.new_subgroups_by_enumeration([list(e.ranks) for e in engines], backend="gloo")
    return TorchGroup(mine, engine_of(dist.get_rank(), engines).ranks)


class EngineSide(Protocol):
    """What :func:`shared_generate` asks of the engine (and of every rank's trainer side)."""

    def release(self) -> None:
        """Every rank, before the leader's engine may start or wake: hand cached GPU memory back."""
        ...

    def open(self) -> bool:
        """Leader: start or wake the engine; whether the policy's weights must be pushed into it."""
        ...

    def push(self, lead: bool) -> None:
        """Every rank, when the leader asked: ``lead`` writes into the engine, the others join the gathers."""
        ...

    def run(self, calls: list[Call]) -> list[list[Sample]]:
        """Leader: ``calls[i].n`` samples for each call, in one engine call."""
        ...

    def close(self) -> None:
        """Leader, after the engine call (also after a failed one): put the engine to sleep."""
        ...


@dataclass(frozen=True)
class _Failed:
    """The leader's error, sent in place of a value (exceptions need not pickle)."""

    message: str


def merge(requests: list[list[Call]]) -> tuple[list[Call], list[list[int]]]:
    """The group's calls, each distinct call once (first-seen order), and where each member's calls went.

    Returns:
        ``(calls, where)``: ``where[m][j]`` is the index in ``calls`` of member ``m``'s ``j``-th call.
    """
    index: dict[Call, int] = {}
    where = [[index.setdefault(call, len(index)) for call in request] for request in requests]
    return list(index), where


def split(results: list[list[Sample]], where: list[list[int]]) -> list[list[list[Sample]]]:
    """Each member's results, in its own call order (the inverse of :func:`merge`)."""
    return [[results[i] for i in member] for member in where]


def shared_generate(group: ShareGroup, calls: list[Call], side: EngineSide) -> list[list[Sample]]:
    """The samples of this rank's ``calls`` (``calls[j].n`` each), generated by its group leader's engine.

    Every member of ``group`` calls it at the same point, with its own ``calls`` (possibly none).

    Raises:
        RuntimeError: On every member, when the leader's engine failed (the leader raises the error itself).
    """
    side.release()
    requests = group.gather(list(calls))
    lead = group.rank == 0
    error: BaseException | None = None
    need: bool | _Failed = False
    if lead:
        try:
            need = side.open()
        except Exception as err:  # noqa: BLE001 - sent to the group, raised below on every member
            error, need = err, _Failed(f"{type(err).__name__}: {err}")
    need = _told(group, need, error)
    if not lead:
        if need:
            side.push(False)
        return _told(group, None, None, scatter=True)
    try:
        if need:
            side.push(True)
        unique, where = merge(requests)
        results = side.run(unique)
        _check(unique, results)
        out: list[Any] = split(results, where)
    except Exception as err:  # noqa: BLE001 - as above
        error, out = err, [_Failed(f"{type(err).__name__}: {err}")] * group.size
    finally:
        side.close()
    return _told(group, out, error, scatter=True)


def _told(group: ShareGroup, value: Any, error: BaseException | None, scatter: bool = False) -> Any:
    """The leader's ``value`` (its copy for each member when ``scatter``), raising the leader's error."""
    if scatter:
        mine = group.scatter(value)
    else:
        mine = group.scatter([value] * group.size if group.rank == 0 else None)
    if error is not None:
        raise error
    if isinstance(mine, _Failed):
        raise RuntimeError(f"the rollout engine of this rank's TP group (its leader) failed: {mine.message}")
    return mine


def _check(calls: list[Call], results: list[list[Sample]]) -> None:
    """The engine returned ``n`` samples for each call."""
    got = [len(r) for r in results]
    want = [c.n for c in calls]
    if got != want:
        raise RuntimeError(f"the engine returned {got} samples for calls asking {want}")
