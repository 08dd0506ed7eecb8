"""vLLM engine placement and weight-push plans for (world size, ranks per node, GPUs per node, TP)."""

from __future__ import annotations

from collections import Counter

import pytest

from longact_pl.rollout.placement import (
    buckets_per_node,
    engine_of,
    place_engines,
    push_plan,
    pushes_of,
    visible_devices,
)

NAMES = ["embed.weight", "layers.0.q_proj.weight", "layers.0.k_proj.weight", "norm.weight"]

COMBOS = [
    (world, per_node, gpus, tp)
    for per_node in (1, 2, 4, 8)
    for nodes in (1, 2, 3)
    for gpus in (per_node, 8)
    for tp in (1, 2, 4, 8)
    if per_node % tp == 0 and gpus >= per_node
    for world in (per_node * nodes,)
]


@pytest.mark.parametrize("world,per_node,gpus,tp", COMBOS)
def test_placement_invariants(world, per_node, gpus, tp):
    engines = place_engines(world, per_node, gpus, tp)
    assert len(engines) == world // tp
    # every rank's GPU is used by exactly one engine, and each engine has tp of them
    used = Counter((e.node, g) for e in engines for g in e.local_gpus)
    assert used == Counter((r // per_node, r % per_node) for r in range(world))
    assert all(len(e.ranks) == tp and len(set(e.local_gpus)) == tp for e in engines)
    for e in engines:
        # a TP group stays within one node, its leader is its first rank
        assert {r // per_node for r in e.ranks} == {e.node}
        assert e.leader == e.ranks[0] and engine_of(e.leader, engines) is e
        devices = visible_devices(e, None, gpus).split(",")
        assert len(devices) == tp and all(0 <= int(d) < gpus for d in devices)
    leaders = [r for r in range(world) if pushes_of(r, engines)]
    assert len(leaders) == len(engines)
    assert sum(buckets_per_node(engines, n) for n in range(world // per_node)) == len(engines)
    # every parameter pushed exactly once per engine, by its leader, to all its TP workers, from every shard
    plan = push_plan(engines, NAMES, world)
    assert Counter((s.name, s.engine) for s in plan) == Counter(
        {(n, e.index): 1 for n in NAMES for e in engines}
    )
    for step in plan:
        engine = engines[step.engine]
        assert step.sender == engine.leader
        assert step.receivers == tuple(range(tp))
        assert step.gather_from == tuple(range(world))


def test_tp1_keeps_one_engine_per_rank_on_its_own_gpu():
    engines = place_engines(4, 4, 4, 1)
    assert [visible_devices(e, None, 4) for e in engines] == ["0", "1", "2", "3"]


def test_tp2_engine_sees_its_groups_gpus_from_the_nodes_visible_list():
    """Node restricted to GPUs 4-7: the second TP group of 2 sees physical 6,7 (not the trainer's one GPU)."""
    engines = place_engines(8, 4, 4, 2)
    assert [e.ranks for e in engines] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert visible_devices(engines[1], ["4", "5", "6", "7"], 4) == "6,7"
    assert visible_devices(engines[3], None, 4) == "2,3"  # node 1, local GPUs 2 and 3
    assert [e.node for e in engines] == [0, 0, 1, 1]
    assert buckets_per_node(engines, 0) == 2


@pytest.mark.parametrize(
    "args,needle",
    [
        ((4, 4, 4, 3), "tensor_parallel_size=3 must divide the ranks per node (4)"),
        ((8, 4, 4, 8), "a TP group stays within one node"),
        ((4, 4, 2, 1), "each rank needs its own GPU"),
        ((6, 4, 4, 1), "not a whole number of nodes"),
        ((4, 4, 4, 0), "must be >= 1"),
    ],
)
def test_impossible_layouts_are_refused_naming_the_setting(args, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        place_engines(*args)


def _fake_gpus(monkeypatch, count: int, current: int, visible: str | None, local_world: int | None = None):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    for key, value in (("CUDA_VISIBLE_DEVICES", visible), ("LOCAL_WORLD_SIZE", local_world)):
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, str(value))


@pytest.mark.parametrize(
    "tp,current,visible,inside",
    [(1, 2, None, "2"), (1, 1, "4,5,6,7", "5"), (2, 2, None, "2,3"), (4, 0, "4,5,6,7", "4,5,6,7")],
)
def test_engine_start_sees_its_tp_groups_gpus(monkeypatch, tp, current, visible, inside):
    """The engine inherits its TP group's GPUs; the trainer's device list is restored afterwards."""
    import os

    from longact_pl.rollout.vllm_engine import _engine_gpus

    _fake_gpus(monkeypatch, 4, current, visible)
    with _engine_gpus(tp):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == inside
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == visible


def test_a_non_leader_rank_starting_its_own_engine_is_refused_naming_the_fix(monkeypatch):
    """Only a TP group's leader starts an engine (the others share it: rollout/tp_share.py)."""
    from longact_pl.rollout.vllm_engine import _engine_gpus

    _fake_gpus(monkeypatch, 4, 3, None)
    match = r"tensor_parallel_size=2: .* led by GPU 2.*tp_share.*must use tensor_parallel_size=1"
    with pytest.raises(NotImplementedError, match=match), _engine_gpus(2):
        pass
