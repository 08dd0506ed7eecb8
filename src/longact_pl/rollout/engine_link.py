"""The link between a trainer process and its engine process: a message channel and a 2-member process group.

Messages (requests, tables of contents, rollouts) go over a ``multiprocessing.connection`` socket,
pickled with the standard pickler (no shared-memory handles: the two processes are not related by
``torch.multiprocessing``). Weights go over a process group of two members (trainer = rank 0, engine =
rank 1) built directly on a ``TCPStore``, independent of the trainer's default group (DDP keeps its own):
gloo on CPU, NCCL when both ends hold CUDA tensors.

A weight push (:func:`send_weights` / :func:`recv_weights`) moves the policy in buckets: the tensors are
packed into one flat ``uint8`` buffer of ``bucket_bytes`` (or the largest tensor, if bigger); its table of
contents goes over the channel, then the buffer is broadcast from the trainer. Peak extra memory on each
side: one bucket (plus, on the engine, the received weights it keeps for its next version boundary).
Tied weights are sent once and re-tied on arrival (``aliases``).
"""

from __future__ import annotations

import datetime
import pickle
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from longact_pl.rollout.weight_push import ALIGN, aligned, cast_dtype

TRAINER, ENGINE = 0, 1  # ranks in the pair group


def send(conn, message: Any) -> None:
    """Send ``message`` (standard pickle: tensors travel as bytes)."""
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def recv(conn) -> Any:
    """Receive one message from the peer process (our own engine or trainer, authenticated)."""
    return pickle.loads(conn.recv_bytes())  # noqa: S301 - the peer is this run's own process (authkey)


def pair_group(host: str, port: int, rank: int, backend: str, timeout_s: float) -> dist.ProcessGroup:
    """The engine's end of the 2-member process group with its trainer (rank 0, which hosts the store).

    Args:
        host: The store's host.
        port: Its port (the trainer's :class:`torch.distributed.TCPStore`, created with port 0).
        rank: The engine's rank (1).
        backend: ``gloo`` or ``nccl``.
        timeout_s: A collective waiting longer fails (a dead peer is noticed by then at the latest).
    """
    store = dist.TCPStore(host, port, 2, is_master=False, timeout=datetime.timedelta(seconds=timeout_s))
    return make_group(dist.PrefixStore("longact-engine", store), rank, backend, timeout_s)


def make_group(store, rank: int, backend: str, timeout_s: float) -> dist.ProcessGroup:
    """A 2-member ``backend`` group on ``store`` (both members call it)."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if backend == "nccl":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, 2, options)
    if backend != "gloo":
        raise ValueError(f"the engine link's backend must be gloo or nccl, got {backend!r}")
    return dist.ProcessGroupGloo(store, rank, 2, timeout)


def _broadcast(group: dist.ProcessGroup, buffer: Tensor) -> None:
    options = dist.BroadcastOptions()
    options.rootRank = TRAINER
    group.broadcast([buffer], options).wait()


@torch.no_grad()
def send_weights(
    conn,
    group: dist.ProcessGroup,
    weights: Iterator[tuple[str, Tensor]],
    version: int,
    bucket_bytes: int,
    largest_bytes: int,
    aliases: dict[str, str],
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> int:
    """Push ``weights`` as ``version`` to the engine, in buckets; returns the buckets sent.

    Args:
        conn: The channel (tables of contents).
        group: The pair group (the buckets; the engine receives with :func:`recv_weights`).
        weights: ``(name, tensor)`` pairs, consumed one at a time (tied ones once).
        version: The policy version they are.
        bucket_bytes: Bucket size; ``largest_bytes`` if bigger (one tensor never spans two buckets).
        largest_bytes: Size of the largest tensor (cast).
        aliases: ``{alias: name}`` of tied weights not in ``weights``.
        dtype: Floating-point tensors are cast to it in the bucket (``None``: sent as they are, bit-exact).
        device: Where the bucket lives (CUDA for NCCL).
    """
    size = aligned(max(bucket_bytes, largest_bytes, ALIGN))
    bucket = torch.empty(size, dtype=torch.uint8, device=device)  # [size]
    entries: list[dict] = []
    offset, buckets = 0, 0

    def flush(last: bool) -> None:
        nonlocal entries, offset, buckets
        send(conn, {"kind": "bucket", "version": version, "size": offset, "tensors": entries, "last": last,
                    "aliases": aliases if last else {}})  # fmt: skip
        if offset:
            _broadcast(group, bucket[:offset])
        buckets += 1
        entries, offset = [], 0

    for name, tensor in weights:
        cast = cast_dtype(tensor, dtype)
        nbytes = tensor.numel() * cast.itemsize
        if entries and offset + nbytes > size:
            flush(last=False)
        bucket[offset : offset + nbytes].view(cast).copy_(tensor.reshape(-1))  # casts on the way
        entries.append({"name": name, "dtype": cast, "shape": tuple(tensor.shape), "offset": offset,
                        "nbytes": nbytes})  # fmt: skip
        offset = aligned(offset + nbytes)
    flush(last=True)
    return buckets


@torch.no_grad()
def recv_bucket(
    group: dist.ProcessGroup, header: dict, device: torch.device | str = "cpu"
) -> dict[str, Tensor]:
    """The tensors of one bucket whose table of contents is ``header`` (the engine's side)."""
    bucket = torch.empty(max(header["size"], 1), dtype=torch.uint8, device=device)  # [size]
    if header["size"]:
        _broadcast(group, bucket[: header["size"]])
    out = {}
    for e in header["tensors"]:
        raw = bucket[e["offset"] : e["offset"] + e["nbytes"]]  # [nbytes]
        out[e["name"]] = raw.view(e["dtype"]).reshape(e["shape"])  # views of this fresh bucket
    return out


def recv_weights(conn, group: dist.ProcessGroup, first: dict | None = None, device="cpu") -> tuple[int, dict]:
    """Receive one whole push: ``(version, state dict with tied weights re-tied)``.

    Args:
        conn: The channel.
        group: The pair group.
        first: The first bucket's header when the caller already read it from ``conn``.
        device: Where the received tensors live.
    """
    state: dict[str, Tensor] = {}
    header = first if first is not None else recv(conn)
    while True:
        if header.get("kind") != "bucket":
            raise RuntimeError(f"expected a weight bucket from the trainer, got {header.get('kind')!r}")
        state.update(recv_bucket(group, header, device))
        if header["last"]:
            for alias, name in header["aliases"].items():
                state[alias] = state[name]
            return header["version"], state
        header = recv(conn)
