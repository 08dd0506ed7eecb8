"""Trainer side of a weight push into vLLM workers: shared-memory buckets of bounded size, or one file.

Buckets (default): the policy's weights are gathered one tensor at a time (a collective per tensor under
FSDP2), cast to the engine dtype and packed into one shared-memory segment of ``bucket_bytes`` (or the
largest tensor, if bigger): a file in ``/dev/shm`` (memory, not disk; one per pushing rank, all at once: in a
container give ``--shm-size`` at least ranks-per-node / TP buckets, ``rollout/memory.py``) mapped by the
trainer and the workers. When the segment is full, its table of contents
goes to every worker over a Unix socket; the workers copy the tensors out into vLLM's layer-wise reload and
acknowledge; then the segment is refilled. Peak extra memory on the trainer: one bucket plus one tensor
being gathered and cast; no file on disk and no second copy of the model. The workers' side is
``rollout/vllm_worker.py``.

File (fallback, ``rollout.weight_sync=file``): the whole cast state dict is written to one safetensors file
in ``sync_dir`` and each worker reloads it (peak extra memory: the model in the engine dtype, plus the file).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from longact_pl.gather import full_tensor
from longact_pl.rollout.memory import check_shm
from longact_pl.rollout.vllm_worker import map_segment, recv_message, send_message

ALIGN = 64  # bytes: every tensor starts at a multiple of this in the segment
SHM_DIR = "/dev/shm"  # where the segment lives (falls back to the temp dir where it does not exist)
POLL_S = 1.0  # how often a blocked socket wait checks whether the engine call failed


@dataclass
class PushStats:
    """What one push moved.

    Attributes:
        tensors: Tensors sent (tied weights once).
        bytes: Their total size in the engine dtype.
        buckets: Buckets (segment fills) or 1 for a file.
        segment_bytes: Size of the shared-memory segment (0 for a file): the trainer's extra memory.
    """

    tensors: int = 0
    bytes: int = 0
    buckets: int = 0
    segment_bytes: int = 0


@torch.no_grad()
def iter_weights(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """``(name, full tensor)`` for every parameter and persistent buffer, tied ones once, one at a time.

    Under FSDP2 every rank must iterate in step (each ``full_tensor()`` is a collective).
    """
    seen: set[int] = set()
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:  # tied weights once (vLLM re-ties them on load)
            continue
        seen.add(id(t))
        yield name, full_tensor(t.detach())


def cast_dtype(tensor: Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype ``tensor`` is sent in: ``dtype`` for floating-point tensors, else its own."""
    return dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype


def largest_tensor_bytes(model: nn.Module, dtype: torch.dtype | None) -> int:
    """Bytes of the largest (full, cast) tensor of ``model``, known before gathering anything."""
    sizes = [t.numel() * cast_dtype(t, dtype).itemsize for t in model.state_dict(keep_vars=True).values()]
    return max(sizes, default=0)  # DTensor: numel() is the global size


def aligned(n: int) -> int:
    """``n`` rounded up to a multiple of :data:`ALIGN` (where the next tensor of a bucket starts)."""
    return (n + ALIGN - 1) // ALIGN * ALIGN


class _Stream:
    """The trainer's end of one bucket stream: a listening socket, one connection per worker.

    The socket listens before the workers are called (they connect as soon as the call reaches them);
    ``call`` is the pending engine call, checked while waiting so a failed worker raises instead of hanging.
    """

    def __init__(self, folder: str) -> None:
        self.call: Future | None = None
        self.address = str(Path(folder) / "weights.sock")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.address)
        self.server.listen()
        self.server.settimeout(POLL_S)
        self.conns: list[socket.socket] = []

    def accept(self, workers: int) -> None:
        while len(self.conns) < workers:
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                self._check_call()
                continue
            conn.settimeout(POLL_S)
            self.conns.append(conn)

    def send_all(self, message: dict) -> None:
        for conn in self.conns:
            send_message(conn, message)

    def wait_acks(self) -> None:
        for conn in self.conns:
            while True:
                try:
                    recv_message(conn)
                    break
                except TimeoutError:
                    self._check_call()

    def _check_call(self) -> None:
        if self.call is not None and self.call.done():
            self.call.result()  # re-raises the worker's error
            raise RuntimeError("the vLLM weight-stream call ended before the trainer finished sending")

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.server.close()


def push_buckets(
    rpc: Callable[..., Any],
    weights: Iterator[tuple[str, Tensor]],
    dtype: torch.dtype | None,
    workers: int,
    bucket_bytes: int,
    largest_bytes: int = 0,
    buckets_per_node: int = 1,
) -> PushStats:
    """Stream ``weights`` to ``workers`` vLLM workers through one reused shared-memory bucket.

    Args:
        rpc: ``llm.collective_rpc``; called once (in a helper thread) with ``load_weights_stream``.
        weights: ``(name, tensor)`` pairs (e.g. :func:`iter_weights`), consumed one at a time.
        dtype: Floating-point tensors are cast to it while copied into the bucket (no cast copy).
        workers: How many workers take part in the collective call (each connects once).
        bucket_bytes: Bucket size; a bigger single tensor gets a segment of its own size.
        largest_bytes: Size of the largest tensor (:func:`largest_tensor_bytes`), so the one segment fits it.
        buckets_per_node: Segments alive at once in this node's shared memory (one per pushing rank).

    Returns:
        What was sent.
    """
    stats = PushStats(segment_bytes=aligned(max(bucket_bytes, largest_bytes, ALIGN)))
    shm_dir = SHM_DIR if os.path.isdir(SHM_DIR) else None
    folder = shm_dir or tempfile.gettempdir()
    check_shm(shutil.disk_usage(folder).free, stats.segment_bytes, buckets_per_node, folder)
    with (
        tempfile.TemporaryDirectory(prefix="longact-push-") as folder,
        tempfile.TemporaryDirectory(dir=shm_dir, prefix="longact-push-") as seg_dir,
        ThreadPoolExecutor(1) as pool,
    ):
        path = str(Path(seg_dir) / "bucket")
        with open(path, "wb") as f:
            f.truncate(stats.segment_bytes)
        segment = map_segment(path, stats.segment_bytes)  # uint8 [segment_bytes]
        stream = _Stream(folder)
        stream.call = call = pool.submit(rpc, "load_weights_stream", args=(stream.address,))
        try:
            stream.accept(workers)
            entries: list[dict] = []
            offset = 0

            def flush() -> None:
                nonlocal entries, offset
                stream.send_all({"segment": path, "size": stats.segment_bytes, "tensors": entries})
                stream.wait_acks()
                stats.buckets += 1
                entries, offset = [], 0

            for name, tensor in weights:
                cast = cast_dtype(tensor, dtype)
                nbytes = tensor.numel() * cast.itemsize
                if nbytes > stats.segment_bytes:
                    raise ValueError(f"{name}: {nbytes} bytes exceed the segment ({stats.segment_bytes})")
                if entries and offset + nbytes > stats.segment_bytes:
                    flush()
                segment[offset : offset + nbytes].view(cast).copy_(tensor.reshape(-1))  # casts on the way
                entries.append({"name": name, "dtype": str(cast).removeprefix("torch."),
                                "shape": list(tensor.shape), "offset": offset, "nbytes": nbytes})  # fmt: skip
                offset = aligned(offset + nbytes)
                stats.tensors += 1
                stats.bytes += nbytes
            if entries:
                flush()
            stream.send_all({"done": True})
            call.result()
        finally:
            stream.close()
            del segment
    return stats


def push_file(
    rpc: Callable[..., Any],
    weights: Iterator[tuple[str, Tensor]],
    dtype: torch.dtype | None,
    sync_dir: str | None,
) -> PushStats:
    """Write ``weights``, cast to ``dtype``, to one safetensors file in ``sync_dir`` for the workers."""
    # the whole model in the engine dtype, on CPU
    state = {name: t.to("cpu", cast_dtype(t, dtype)).contiguous() for name, t in weights}
    stats = PushStats(tensors=len(state), bytes=sum(t.numel() * t.element_size() for t in state.values()))
    with tempfile.TemporaryDirectory(dir=sync_dir, prefix="longact-sync-") as tmp:
        path = str(Path(tmp) / "weights.safetensors")
        save_file(state, path)
        del state
        rpc("load_weights_file", args=(path,))
    stats.buckets = 1
    return stats
