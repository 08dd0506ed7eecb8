"""Memory hand-off between trainer and colocated vLLM engine; the shared memory of a weight push (pure).

GPU memory. vLLM (0.32) starts only when the GPU has at least ``gpu_memory_utilization x total`` free (its
worker compares the free memory at start with that share, whatever ``kv_cache_memory_bytes`` says); with
sleep mode, waking reallocates what sleeping released. The trainer's PyTorch allocator keeps the blocks it
freed reserved, invisible to vLLM, until ``torch.cuda.empty_cache()``: so the engine empties the cache
before it starts and before every wake, then checks the free memory against what it needs
(:func:`check_engine_memory`) and fails naming the settings instead of running out of memory inside vLLM.

Shared memory. A bucket push keeps one segment of ``rollout.bucket_mb`` in ``/dev/shm`` per pushing rank
(one per engine: every rank with TP = 1, one per TP group otherwise), all at once during a push, and they
share the node's ``/dev/shm``: :func:`shm_budget` is what the node needs, checked before a segment is made.
"""

from __future__ import annotations

GIB = 2**30


def engine_start_bytes(total_bytes: int, gpu_memory_utilization: float) -> int:
    """Free GPU memory vLLM requires at start: ``gpu_memory_utilization x total``."""
    return int(gpu_memory_utilization * total_bytes)


def check_engine_memory(
    free_bytes: int,
    total_bytes: int,
    need_bytes: int,
    gpu_memory_utilization: float,
    sleep_level: int,
    when: str,
) -> None:
    """Fail, naming the settings, when the GPU has less free memory than the engine needs now.

    Args:
        free_bytes: Free memory on the GPU after ``torch.cuda.empty_cache()``.
        total_bytes: The GPU's memory.
        need_bytes: :func:`engine_start_bytes` at start; at wake, what the engine's sleep released.
        gpu_memory_utilization: ``rollout.gpu_memory_utilization``.
        sleep_level: ``rollout.sleep_level``.
        when: ``start`` or ``wake``, for the message.

    Raises:
        RuntimeError: ``free_bytes < need_bytes``.
    """
    if free_bytes >= need_bytes:
        return
    fixes = [f"lower rollout.gpu_memory_utilization (now {gpu_memory_utilization:g})"]
    if sleep_level == 0:
        fixes.append("set rollout.sleep_level=1 (or 2) so the engine frees its memory while the trainer runs")
    fixes.append("or shrink the trainer's share (module.learner.micro_batch_tokens, more GPUs, offload)")
    raise RuntimeError(
        f"vLLM {when}: the GPU has {free_bytes / GIB:.1f} GiB free of {total_bytes / GIB:.1f} GiB, "
        f"the engine needs {need_bytes / GIB:.1f} GiB"
        + (f" (rollout.gpu_memory_utilization={gpu_memory_utilization:g} x total)" if when == "start" else "")
        + f" with rollout.sleep_level={sleep_level}: "
        + "; ".join(fixes)
    )


def shm_budget(bucket_bytes: int, buckets_per_node: int) -> int:
    """Bytes of ``/dev/shm`` a push needs on one node: one bucket per pushing rank there, all at once."""
    return bucket_bytes * max(1, buckets_per_node)


def check_shm(free_bytes: int, bucket_bytes: int, buckets_per_node: int, folder: str = "/dev/shm") -> None:
    """Fail early, naming the settings, when ``folder`` cannot hold every bucket of the node at once.

    Raises:
        RuntimeError: ``free_bytes < shm_budget(...)``.
    """
    need = shm_budget(bucket_bytes, buckets_per_node)
    if free_bytes >= need:
        return
    raise RuntimeError(
        f"{folder} has {free_bytes / 2**20:.0f} MiB free, less than the {buckets_per_node} weight "
        f"bucket(s) of {bucket_bytes / 2**20:.0f} MiB this node's pushing ranks hold at once "
        f"({need / 2**20:.0f} MiB): "
        "lower rollout.bucket_mb, enlarge it (docker --shm-size), or use rollout.weight_sync=file"
    )
