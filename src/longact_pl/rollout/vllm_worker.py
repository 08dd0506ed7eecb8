"""vLLM worker extension: reload the engine's weights in place, streamed in buckets or from one file.

vLLM mixes this class into its worker (``LLM(worker_extension_cls=...)``); its methods run inside the
worker processes and are called with ``llm.collective_rpc(name, args=...)``. It imports no vLLM module
itself (only ``self.model_runner``, set by vLLM), so ``rollout/vllm_engine.py`` stays the one module that
imports vLLM.

Why not tensors as RPC arguments: they arrive as nested lists. ``model.load_weights`` called directly skips
the CPU backend's weight repacking; ``model_runner.reload_weights(weights_iterator=...)`` does the
layer-wise reload (including repacking) for every backend, but it must see *all* weights in one call (a
layer split across calls would be processed half-loaded). So the bucket stream is one call whose iterator
pulls buckets from the trainer (``rollout/weight_push.py``) over a Unix socket: each bucket is written by
the trainer into one shared-memory segment (a file in ``/dev/shm``, mapped by both processes), announced by a
JSON header, and acknowledged once its tensors have been consumed, after which the trainer overwrites it
with the next one.

Tied embeddings: the checkpoint has no ``lm_head.weight`` then, so the reload leaves the LM head's kernel
(on CPU a packed copy of the *old* embedding) in place. After each reload the head is tied to the new
embedding again and its weight processing re-run.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Iterator

import torch
from safetensors import safe_open
from torch import Tensor

_HEADER = struct.Struct("!I")  # message length prefix


def send_message(conn: socket.socket, message: dict) -> None:
    """Send one JSON message, prefixed with its length."""
    data = json.dumps(message).encode()
    conn.sendall(_HEADER.pack(len(data)) + data)


def recv_message(conn: socket.socket) -> dict:
    """Receive one message written by :func:`send_message`."""
    (size,) = _HEADER.unpack(_recv_exactly(conn, _HEADER.size))
    return json.loads(_recv_exactly(conn, size))


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = conn.recv(left)
        if not chunk:
            raise ConnectionError("weight stream closed before the message ended")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def map_segment(path: str, size: int) -> Tensor:
    """``uint8 [size]`` tensor mapped (shared) onto the segment file ``path``: both processes see it."""
    return torch.from_file(path, shared=True, size=size, dtype=torch.uint8)


def tensor_in(segment: Tensor, entry: dict) -> Tensor:
    """A view of one tensor described by a bucket entry ``{name, dtype, shape, offset, nbytes}``."""
    raw = segment[entry["offset"] : entry["offset"] + entry["nbytes"]]  # [nbytes]
    return raw.view(getattr(torch, entry["dtype"])).view(entry["shape"])


def iter_stream(conn: socket.socket) -> Iterator[tuple[str, Tensor]]:
    """Yield ``(name, tensor)`` from the trainer's buckets; acknowledge each bucket once it is consumed.

    Each tensor is copied out of the segment (one tensor at a time), because vLLM's layer-wise reload may
    hold a tensor until its layer's other weights arrive, possibly in the next bucket.
    """
    segment: Tensor | None = None  # the trainer's pages, read only here
    while True:
        header = recv_message(conn)
        if header.get("done"):
            return
        if segment is None:
            segment = map_segment(header["segment"], header["size"])
        for entry in header["tensors"]:
            yield entry["name"], tensor_in(segment, entry).clone()
        send_message(conn, {"ack": len(header["tensors"])})


def iter_safetensors(path: str) -> Iterator[tuple[str, Tensor]]:
    """Yield ``(name, tensor)`` pairs from a safetensors file, one tensor in memory at a time."""
    with safe_open(path, framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open handles are not iterable)
            yield name, f.get_tensor(name)


class WeightSyncExtension:
    """Methods added to every vLLM worker (``self`` is the worker)."""

    def worker_pid(self) -> int:
        """The process id of this worker (the engine counts its workers with it; tests read their memory)."""
        return os.getpid()

    def load_weights_stream(self, address: str) -> int:
        """Connect to the trainer's socket at ``address`` and reload every weight it streams, in place.

        Returns:
            The number of tensors received.
        """
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(address)
        try:
            return self._reload(iter_stream(conn))
        finally:
            conn.close()

    def load_weights_file(self, path: str) -> int:
        """Load Hugging Face-named weights from the safetensors file ``path`` into the running model.

        Returns:
            The number of tensors in the file.
        """
        return self._reload(iter_safetensors(path))

    def _reload(self, weights: Iterator[tuple[str, Tensor]]) -> int:
        count = [0]

        def counted() -> Iterator[tuple[str, Tensor]]:
            for item in weights:
                count[0] += 1
                yield item

        self.model_runner.reload_weights(weights_iterator=counted())  # type: ignore[attr-defined]
        self._retie_lm_head()
        return count[0]

    def _retie_lm_head(self) -> None:
        """Point a tied LM head at the reloaded embedding and rebuild its kernel (CPU packs it)."""
        config = self.model_config.hf_text_config  # type: ignore[attr-defined]
        if not getattr(config, "tie_word_embeddings", False):
            return
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        modules = dict(model.named_modules())
        head = next((m for n, m in modules.items() if n.split(".")[-1] == "lm_head"), None)
        embed = next((m for n, m in modules.items() if n.split(".")[-1] == "embed_tokens"), None)
        if head is None or embed is None:
            return
        head.weight = embed.weight
        head.quant_method.process_weights_after_loading(head)
