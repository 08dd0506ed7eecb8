"""Collectives of a sequence-parallel group, with the autograd rules Ulysses needs.

A sequence-parallel (SP) group is ``N`` ranks that hold the same rows, each ``1/N`` of their positions
(rank ``r`` holds positions ``[r * S, (r + 1) * S)`` of a sequence padded to ``N * S``). Three collectives:

* :func:`seq_to_heads`: ``[b, h, S, d]`` (all heads, my positions) -> ``[b, h / N, N * S, d]`` (my heads, all
  positions); the backward is the inverse all-to-all.
* :func:`heads_to_seq`: the inverse, ``[b, N * S, h / N, d]`` -> ``[b, S, h, d]`` (attention output layout).
* :func:`sum_over_group`: the sum of per-rank partial results (each rank filled the entries it owns) whose
  backward is the identity: every rank of the group computes the same loss from the summed tensor, so each
  entry's gradient must reach the one rank that produced it exactly once, not ``N`` times.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class SPGroup:
    """The sequence-parallel group this rank belongs to.

    Attributes:
        group: The process group of the ``N`` ranks (``None`` with ``size == 1``: no communication).
        size: N.
        rank: This rank's index in the group (which ``1/N`` of the positions and heads it holds).
    """

    group: Any
    size: int
    rank: int

    @classmethod
    def of(cls, group: Any) -> SPGroup:
        """The group of a ``torch.distributed`` process group (size and rank read from it)."""
        return cls(group, dist.get_world_size(group), dist.get_rank(group))

    def shard_len(self, length: int) -> int:
        """Positions per rank for a sequence of ``length`` (padded up to a multiple of N)."""
        return -(-length // self.size)

    def local(self, t: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """The slice of ``t`` this rank holds along ``dim`` (whose size must be a multiple of N)."""
        if t.shape[dim] % self.size:
            raise ValueError(f"dim {dim} of size {t.shape[dim]} does not split into {self.size} equal shards")
        return t.chunk(self.size, dim=dim)[self.rank]


def _all_to_all(x: torch.Tensor, group: Any, size: int, scatter_dim: int, gather_dim: int) -> torch.Tensor:
    """Chunk ``i`` of ``x`` (along ``scatter_dim``) goes to rank ``i``; arrivals join along ``gather_dim``."""
    if x.shape[scatter_dim] % size:
        raise ValueError(f"cannot split dim {scatter_dim} of size {x.shape[scatter_dim]} over {size} ranks")
    # [N, *chunk]; no copy where the chunks already lie in order (one row: the prompt pass)
    send = x.unflatten(scatter_dim, (size, -1)).movedim(scatter_dim, 0).contiguous()
    recv = torch.empty_like(send)  # [N, *chunk]: recv[i] came from rank i
    dist.all_to_all_single(recv, send, group=group)
    return recv.movedim(0, gather_dim).flatten(gather_dim, gather_dim + 1)  # cat of recv[i] along gather_dim


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, sp: SPGroup, scatter_dim: int, gather_dim: int) -> torch.Tensor:
        ctx.sp, ctx.dims = sp, (scatter_dim, gather_dim)
        return _all_to_all(x, sp.group, sp.size, scatter_dim, gather_dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        scatter_dim, gather_dim = ctx.dims
        return _all_to_all(grad, ctx.sp.group, ctx.sp.size, gather_dim, scatter_dim), None, None, None


def seq_to_heads(x: torch.Tensor, sp: SPGroup) -> torch.Tensor:
    """``[b, h, S, d]`` (every head, this rank's positions) -> ``[b, h / N, N * S, d]`` (its heads)."""
    return x if sp.size == 1 else _AllToAll.apply(x, sp, 1, 2)


def heads_to_seq(x: torch.Tensor, sp: SPGroup) -> torch.Tensor:
    """``[b, N * S, h / N, d]`` (this rank's heads, every position) -> ``[b, S, h, d]`` (every head)."""
    return x if sp.size == 1 else _AllToAll.apply(x, sp, 1, 2)


class _SumIdentityGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, sp: SPGroup) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out, group=sp.group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def sum_over_group(x: torch.Tensor, sp: SPGroup) -> torch.Tensor:
    """Sum of ``x`` over the group; the gradient passes through unchanged (see the module docstring)."""
    if sp.size == 1:
        return x
    if x.requires_grad and torch.is_grad_enabled():
        return _SumIdentityGrad.apply(x, sp)
    out = x.detach().clone()
    dist.all_reduce(out, group=sp.group)
    return out


def map_tensors(obj: T, fn: Callable[[torch.Tensor], torch.Tensor]) -> T:
    """``obj`` with ``fn`` applied to every tensor inside it (tensors, dataclasses, tuples, lists, dicts)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(
            obj, **{f.name: map_tensors(getattr(obj, f.name), fn) for f in dataclasses.fields(obj) if f.init}
        )
    if isinstance(obj, tuple | list):
        return type(obj)(map_tensors(x, fn) for x in obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    return obj


def from_first_rank(value: T, sp: SPGroup, device: torch.device | str) -> T:
    """``value`` as the group's first rank holds it, its tensors on ``device``.

    Every rank of the group calls this; the other ranks' own values are replaced.
    """
    if sp.size == 1:
        return value
    box = [map_tensors(value, lambda t: t.detach().cpu())]
    dist.broadcast_object_list(box, group_src=0, group=sp.group)
    return map_tensors(box[0], lambda t: t.to(device))
