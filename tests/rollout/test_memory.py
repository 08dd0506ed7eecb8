"""Memory hand-off to a colocated vLLM engine (fake GPU numbers); the per-node /dev/shm budget of a push."""

from __future__ import annotations

import types

import pytest
import torch

from longact_pl.rollout import vllm_engine
from longact_pl.rollout.memory import check_engine_memory, check_shm, engine_start_bytes, shm_budget
from longact_pl.rollout.placement import buckets_per_node, place_engines

GIB = 2**30


def test_engine_start_needs_its_share_of_the_whole_gpu():
    assert engine_start_bytes(80 * GIB, 0.3) == 24 * GIB
    check_engine_memory(24 * GIB, 80 * GIB, 24 * GIB, 0.3, 0, "start")
    with pytest.raises(RuntimeError) as err:
        check_engine_memory(20 * GIB, 80 * GIB, 24 * GIB, 0.3, 0, "start")
    message = str(err.value)
    assert "20.0 GiB free of 80.0 GiB, the engine needs 24.0 GiB" in message
    assert "rollout.gpu_memory_utilization=0.3 x total" in message
    assert "lower rollout.gpu_memory_utilization (now 0.3)" in message
    assert "set rollout.sleep_level=1" in message
    with pytest.raises(RuntimeError, match="vLLM wake") as err:
        check_engine_memory(5 * GIB, 80 * GIB, 6 * GIB, 0.3, 1, "wake")
    assert "rollout.sleep_level=1:" in str(err.value) and "set rollout.sleep_level" not in str(err.value)


def test_shm_budget_is_one_bucket_per_pushing_rank_of_the_node():
    """8B on 8 GPUs at TP 1: 8 buckets of ~1.2 GB at once (not one); at TP 2, 4."""
    bucket = 1216 * 2**20
    assert shm_budget(bucket, buckets_per_node(place_engines(8, 8, 8, 1), 0)) == 8 * bucket
    assert shm_budget(bucket, buckets_per_node(place_engines(8, 8, 8, 2), 0)) == 4 * bucket
    check_shm(8 * bucket, bucket, 8)
    with pytest.raises(
        RuntimeError, match=r"less than the 8 weight bucket\(s\) .*rollout.bucket_mb.*--shm-size"
    ):
        check_shm(8 * bucket - 1, bucket, 8)


class _FakeLLM:
    def __init__(self, calls, free):
        self.calls, self.free = calls, free

    def sleep(self, level):
        self.calls.append(("sleep", level))
        self.free[0] += 20 * GIB  # the engine gives back 20 GiB

    def wake_up(self):
        self.calls.append("wake_up")


def _fake_cuda(monkeypatch, calls, free):
    """A fake GPU of 80 GiB whose free memory is ``free[0]`` (``empty_cache`` frees ``free[1]`` more)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def empty_cache():
        calls.append("empty_cache")
        free[0] += free[1]
        free[1] = 0

    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (free[0], 80 * GIB))


def test_wake_empties_the_allocator_first_then_checks_what_sleep_released(monkeypatch):
    calls: list = []
    free = [10 * GIB, 0]
    engine = vllm_engine.Engine(llm=_FakeLLM(calls, free), folder=types.SimpleNamespace(), sleep_level=1)
    engine.gpu_memory_utilization = 0.3
    _fake_cuda(monkeypatch, calls, free)
    engine.sleep()
    assert engine.released == 20 * GIB
    free[0], free[1] = 18 * GIB, 4 * GIB  # the trainer reserved memory; 4 GiB of it are cached but unused
    engine.wake()
    assert calls == [("sleep", 1), "empty_cache", "wake_up"]
    engine.sleep()
    assert engine.released == 20 * GIB
    free[0], free[1] = 10 * GIB, 2 * GIB  # not enough even after emptying the cache: refuse, naming settings
    with pytest.raises(RuntimeError, match="vLLM wake: the GPU has 12.0 GiB free .* needs 20.0 GiB"):
        engine.wake()
    assert calls[-1] == "empty_cache" and engine.asleep
