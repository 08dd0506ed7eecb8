"""Trainer side of a weight push into vLLM workers: shared-memory buckets of bounded size, or one file.

Buckets (default): the policy's weights are gathered one tensor at a time (a collective per tensor under
FSDP2), cast to the engine dtype and packed into one shared-memory segment of ``bucket_bytes`` (or the
largest tensor, if bigger). When the segment is full, its table of contents goes to every worker over a Unix
socket; the workers copy the tensors out into vLLM's layer-wise reload and acknowledge; then the segment is
refilled. Peak extra memory on the trainer: one bucket plus one tensor being gathered and cast; no file and
no second copy of the model. The workers' side is ``rollout/vllm_worker.py``.

File (fallback, ``rollout.weight_sync=file``): the whole cast state dict is written to one safetensors file
in ``sync_dir`` and each worker reloads it (peak extra memory: the model in the engine dtype, plus the file).
"""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from longact_pl.gather import full_tensor
from longact_pl.rollout.vllm_worker import recv_message, send_message

ALIGN = 64  # bytes: every tensor starts at a multiple of this in the segment
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
def iter_weights(model: nn.Module, dtype: torch.dtype | None) -> Iterator[tuple[str, Tensor]]:
    """``(name, full tensor)`` for every parameter and persistent buffer, tied ones once, one at a time.

    Floating-point tensors are cast to ``dtype``; under FSDP2 every rank must iterate in step (each
    ``full_tensor()`` is a collective).
    """
    seen: set[int] = set()
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:  # tied weights once (vLLM re-ties them on load)
            continue
        seen.add(id(t))
        full = full_tensor(t.detach())
        yield name, (full.to(dtype) if dtype is not None and full.is_floating_point() else full)


def largest_tensor_bytes(model: nn.Module, dtype: torch.dtype | None) -> int:
    """Bytes of the largest (full, cast) tensor of ``model``, known before gathering anything."""
    size = 0
    for t in model.state_dict(keep_vars=True).values():
        itemsize = dtype.itemsize if dtype is not None and t.is_floating_point() else t.element_size()
        size = max(size, t.numel() * itemsize)  # DTensor: numel() is the global size
    return size


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class _Stream:
    """The trainer's end of one bucket stream: a listening socket, one connection per worker."""

    def __init__(self, folder: str, call: Future) -> None:
        self.call = call
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
        if self.call.done():
            self.call.result()  # re-raises the worker's error
            raise RuntimeError("the vLLM weight-stream call ended before the trainer finished sending")

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.server.close()


def push_buckets(
    rpc: Callable[..., Any],
    weights: Iterator[tuple[str, Tensor]],
    workers: int,
    bucket_bytes: int,
    largest_bytes: int = 0,
    on_bucket: Callable[[PushStats], None] | None = None,
) -> PushStats:
    """Stream ``weights`` to ``workers`` vLLM workers through one reused shared-memory bucket.

    Args:
        rpc: ``llm.collective_rpc``; called once (in a helper thread) with ``load_weights_stream``.
        weights: ``(name, tensor)`` pairs (e.g. :func:`iter_weights`), consumed one at a time.
        workers: How many workers take part in the collective call (each connects once).
        bucket_bytes: Bucket size; a bigger single tensor gets a segment of its own size.
        largest_bytes: Size of the largest tensor (:func:`largest_tensor_bytes`), so the one segment fits it.
        on_bucket: Called after each bucket is acknowledged (tests measure memory there).

    Returns:
        What was sent.
    """
    stats = PushStats(segment_bytes=_aligned(max(bucket_bytes, largest_bytes, ALIGN)))
    with tempfile.TemporaryDirectory(prefix="longact-push-") as folder, ThreadPoolExecutor(1) as pool:
        call = pool.submit(rpc, "load_weights_stream", args=(str(Path(folder) / "weights.sock"),))
        stream = _Stream(folder, call)
        shm = shared_memory.SharedMemory(create=True, size=stats.segment_bytes)
        try:
            stream.accept(workers)
            entries: list[dict] = []
            offset = 0

            def flush() -> None:
                nonlocal entries, offset
                stream.send_all({"shm": shm.name, "tensors": entries})
                stream.wait_acks()
                stats.buckets += 1
                if on_bucket is not None:
                    on_bucket(stats)
                entries, offset = [], 0

            for name, tensor in weights:
                nbytes = tensor.numel() * tensor.element_size()
                if nbytes > stats.segment_bytes:
                    raise ValueError(f"{name}: {nbytes} bytes exceed the segment ({stats.segment_bytes})")
                if entries and offset + nbytes > stats.segment_bytes:
                    flush()
                dst = torch.frombuffer(shm.buf, dtype=torch.uint8, count=nbytes, offset=offset)
                dst.copy_(tensor.contiguous().view(-1).view(torch.uint8))
                del dst
                entries.append({"name": name, "dtype": str(tensor.dtype).removeprefix("torch."),
                                "shape": list(tensor.shape), "offset": offset, "nbytes": nbytes})  # fmt: skip
                offset = _aligned(offset + nbytes)
                stats.tensors += 1
                stats.bytes += nbytes
            if entries:
                flush()
            stream.send_all({"done": True})
            call.result()
        finally:
            stream.close()
            shm.close()
            shm.unlink()
    return stats


def push_file(
    rpc: Callable[..., Any], weights: Iterator[tuple[str, Tensor]], sync_dir: str | None
) -> PushStats:
    """Write ``weights`` to one safetensors file in ``sync_dir`` and have every worker reload it."""
    state = {name: tensor.contiguous() for name, tensor in weights}  # [whole model in the engine dtype]
    stats = PushStats(tensors=len(state), bytes=sum(t.numel() * t.element_size() for t in state.values()))
    with tempfile.TemporaryDirectory(dir=sync_dir, prefix="longact-sync-") as tmp:
        path = str(Path(tmp) / "weights.safetensors")
        save_file(state, path)
        del state
        rpc("load_weights_file", args=(path,))
    stats.buckets = 1
    return stats
