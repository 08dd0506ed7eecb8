"""Where colocated vLLM engines run, which GPUs each sees, and how the policy's weights reach them (pure).

One engine per tensor-parallel (TP) group of ``tensor_parallel_size`` consecutive ranks of one node, next to
the trainer ranks (as the hybrid engines of verl / NeMo-RL): with TP = 1 every rank hosts an engine on its
own GPU (today's layout); with TP = t the first rank of each group of t (its *leader*) starts the engine with
``tensor_parallel_size=t`` and ``CUDA_VISIBLE_DEVICES`` set to the group's t GPUs, so vLLM's workers take
local ranks 0..t-1 of exactly those devices (vLLM checks its local rank against the visible devices).

Weight push (``rollout/weight_push.py``): FSDP2 shards every parameter over all ranks; each tensor is
all-gathered (every rank takes part: ``full_tensor`` is a collective), and the *leader* of each engine writes
it once into its shared-memory bucket, from which each of the engine's t TP workers copies the full tensor
and keeps its own TP slice (vLLM's weight loaders narrow full tensors). So per engine: one sender, t
receivers, each parameter sent exactly once; the other ranks of the group send nothing and hold no bucket.
Ranks are assumed to use GPU ``LOCAL_RANK`` of their node (one process per GPU, as Lightning launches them).
Rollouts: the group's ranks send their prompts to the leader and get their samples back
(``rollout/tp_share.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

TP_FIELD = "rollout.engine_kwargs.tensor_parallel_size"


@dataclass(frozen=True)
class EnginePlacement:
    """One vLLM engine.

    Attributes:
        index: Engine number (0..world_size / tp - 1).
        node: Node it runs on.
        leader: Global rank that starts the engine and pushes the weights into it.
        ranks: Global ranks whose GPUs the engine uses (its TP group), leader first.
        local_gpus: Those GPUs as positions in the node's device list (``LOCAL_RANK`` of each rank).
    """

    index: int
    node: int
    leader: int
    ranks: tuple[int, ...]
    local_gpus: tuple[int, ...]


@dataclass(frozen=True)
class PushStep:
    """One tensor of one push into one engine.

    Attributes:
        name: Parameter (or buffer) name.
        engine: Engine index.
        gather_from: Ranks whose FSDP shards form the full tensor (all ranks: an all-gather).
        sender: The rank that writes the full tensor into the engine's bucket (the engine's leader).
        receivers: TP worker ranks of the engine (0..tp-1), each keeping its own slice.
    """

    name: str
    engine: int
    gather_from: tuple[int, ...]
    sender: int
    receivers: tuple[int, ...]


def place_engines(
    world_size: int, ranks_per_node: int, gpus_per_node: int, tensor_parallel_size: int = 1
) -> list[EnginePlacement]:
    """The engines of a run: one per TP group of consecutive ranks within a node.

    Args:
        world_size: Trainer processes in all.
        ranks_per_node: Trainer processes per node (``LOCAL_WORLD_SIZE``); rank ``r`` is on node
            ``r // ranks_per_node`` and uses its GPU ``r % ranks_per_node``.
        gpus_per_node: GPUs each process of a node can see.
        tensor_parallel_size: GPUs per engine (TP).

    Returns:
        The engines, in rank order.

    Raises:
        ValueError: Naming the setting, when the sizes do not divide or a TP group would leave its node.
    """
    tp = tensor_parallel_size
    if tp < 1:
        raise ValueError(f"{TP_FIELD} must be >= 1, got {tp}")
    if world_size < 1 or ranks_per_node < 1 or world_size % ranks_per_node:
        raise ValueError(
            f"world size {world_size} is not a whole number of nodes of {ranks_per_node} ranks "
            "(trainer.devices x trainer.num_nodes)"
        )
    if gpus_per_node < ranks_per_node:
        raise ValueError(
            f"{ranks_per_node} ranks per node but {gpus_per_node} visible GPUs: each rank needs its own GPU "
            "(trainer.devices <= GPUs per node)"
        )
    if ranks_per_node % tp:
        raise ValueError(
            f"{TP_FIELD}={tp} must divide the ranks per node ({ranks_per_node}): a TP group stays within one "
            f"node (use a divisor of {ranks_per_node})"
        )
    engines = []
    for first in range(0, world_size, tp):
        ranks = tuple(range(first, first + tp))
        engines.append(
            EnginePlacement(
                index=first // tp,
                node=first // ranks_per_node,
                leader=first,
                ranks=ranks,
                local_gpus=tuple(r % ranks_per_node for r in ranks),
            )
        )
    return engines


def engine_of(rank: int, engines: list[EnginePlacement]) -> EnginePlacement:
    """The engine whose TP group holds ``rank``."""
    for engine in engines:
        if rank in engine.ranks:
            return engine
    raise ValueError(f"rank {rank} is in no engine's group")


def visible_devices(engine: EnginePlacement, node_devices: list[str] | None, gpus_per_node: int) -> str:
    """``CUDA_VISIBLE_DEVICES`` for the engine's processes: its group's GPUs, in TP order.

    Args:
        engine: The engine.
        node_devices: The node's ``CUDA_VISIBLE_DEVICES`` list as the trainer sees it (``None``: all GPUs,
            ``0..gpus_per_node-1``); the engine's ids are taken from it, so a restricted node stays so.
        gpus_per_node: GPUs visible to the trainer on the node.
    """
    ids = node_devices if node_devices else [str(i) for i in range(gpus_per_node)]
    return ",".join(ids[g] for g in engine.local_gpus)


def push_plan(engines: list[EnginePlacement], names: list[str], world_size: int) -> list[PushStep]:
    """Each tensor of a push into each engine: gathered from all shards, sent by the leader to its TP workers.

    Args:
        engines: :func:`place_engines`.
        names: Tensor names in push order (tied weights once).
        world_size: Ranks holding FSDP shards.
    """
    everyone = tuple(range(world_size))
    return [
        PushStep(name, e.index, everyone, e.leader, tuple(range(len(e.ranks))))
        for name in names
        for e in engines
    ]


def pushes_of(rank: int, engines: list[EnginePlacement]) -> bool:
    """Whether ``rank`` writes buckets (leads an engine); every rank takes part in the gathers regardless."""
    return any(e.leader == rank for e in engines)


def buckets_per_node(engines: list[EnginePlacement], node: int) -> int:
    """Shared-memory buckets alive at once on ``node`` during a push: one per engine leader there."""
    return sum(1 for e in engines if e.node == node)
