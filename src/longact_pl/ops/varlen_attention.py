"""The packed pass on variable-length attention kernels: two exact varlen calls merged by their log-sum-exp.

Varlen kernels (flash-attn's ``flash_attn_varlen_func``) attend each query segment to one contiguous key
segment, so "own prompt + own row" (two separate key ranges) is not one call without copying each span's
prompt key/values once per row. Instead the packed pass is split in two parts that cover every allowed
pair exactly once and compute nothing else:

* **prompt part**: the tokens of span ``s`` (contiguous: rows are packed span after span) attend to span
  ``s``'s prompt keys, non-causal (``cu_q`` by span over the packed tokens, ``cu_k`` over the prompt keys);
* **own part**: each row attends causally to itself (``cu_q = cu_k = cu_seqlens``).

Each part returns its output ``o_i`` and log-sum-exp ``lse_i``; the attention over their union is
``o = sum_i exp(lse_i - lse) o_i`` with ``lse = logaddexp(lse_a, lse_b)``. Kernels drop the gradient of
``lse_i``, so :class:`MergedVarlen` has its own backward: each part's kernel backward run with the merged
``o`` and ``lse`` (the identity ring attention uses) gives that part's exact ``dq`` (summed) and
``dk``/``dv``.

A part kernel is an object with ``forward(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale) -> (o, lse)``
and ``backward(do, q, k, v, o, lse, cu_q, cu_k, max_q, max_k, causal, scale) -> (dq, dk, dv)`` in the varlen
layout (``q [T, h, d]``, ``k``/``v`` ``[K, h_kv, d]``, ``lse [h, T]`` float32). :class:`TorchVarlen` is the
reference (segment by segment, CPU tests); :class:`FlashVarlen` wraps flash-attn (imported lazily, here only).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from longact_pl.ops.packed import PackedCompletions


@dataclass(frozen=True)
class VarlenPlan:
    """The two varlen calls of a packed layout (int32 cumulative lengths, as varlen kernels take them).

    Attributes:
        prompt_cu_q: ``[S + 1]`` packed tokens of span ``s``: ``prompt_cu_q[s] .. prompt_cu_q[s + 1] - 1``.
        prompt_cu_k: ``[S + 1]`` span ``s``'s prompt keys (cumulative prompt lengths).
        own_cu: ``[R + 1]`` each row's tokens (queries and keys alike; the layout's ``cu_seqlens``).
        prompt_max_q: Most tokens of one span.
        prompt_max_k: Longest prompt.
        own_max: Longest row.
        num_prompt_keys: ``sum(P_s)``: the own keys start there.
    """

    prompt_cu_q: torch.Tensor
    prompt_cu_k: torch.Tensor
    own_cu: torch.Tensor
    prompt_max_q: int
    prompt_max_k: int
    own_max: int
    num_prompt_keys: int

    @classmethod
    def from_layout(cls, layout: PackedCompletions) -> VarlenPlan:
        """The plan of a packed layout.

        Raises:
            ValueError: If the packed tokens are not ordered span after span.
        """
        owner = layout.owner  # [T]
        if owner.numel() > 1 and bool((owner[1:] < owner[:-1]).any()):
            raise ValueError("varlen packing needs the packed rows ordered span after span")
        spans = len(layout.prompt_lengths)
        per_span = torch.bincount(owner, minlength=spans)  # [S]

        def cumulative(n: torch.Tensor) -> torch.Tensor:
            return torch.cat([n.new_zeros(1), n.cumsum(0)]).to(torch.int32)

        rows = layout.cu_seqlens[1:] - layout.cu_seqlens[:-1]  # [R]
        return cls(
            prompt_cu_q=cumulative(per_span),
            prompt_cu_k=cumulative(layout.prompt_lengths),
            own_cu=layout.cu_seqlens.to(torch.int32),
            prompt_max_q=int(per_span.max()) if spans else 0,
            prompt_max_k=int(layout.prompt_lengths.max()) if spans else 0,
            own_max=int(rows.max()) if len(rows) else 0,
            num_prompt_keys=layout.num_prompt_keys,
        )

    def dense_mask(self) -> torch.Tensor:
        """``[T, sum(P_s) + T]`` bool: the pairs the two calls compute (for tests)."""
        t = int(self.own_cu[-1])
        mask = torch.zeros(t, self.num_prompt_keys + t, dtype=torch.bool, device=self.own_cu.device)
        for s in range(len(self.prompt_cu_k) - 1):
            q0, q1 = int(self.prompt_cu_q[s]), int(self.prompt_cu_q[s + 1])
            mask[q0:q1, int(self.prompt_cu_k[s]) : int(self.prompt_cu_k[s + 1])] = True
        for r in range(len(self.own_cu) - 1):
            a, b = int(self.own_cu[r]), int(self.own_cu[r + 1])
            lower = torch.ones(b - a, b - a, dtype=torch.bool, device=mask.device).tril()
            mask[a:b, self.num_prompt_keys + a : self.num_prompt_keys + b] = lower
        return mask


def _wide(x: torch.Tensor) -> torch.dtype:
    """float32, or ``x``'s dtype where wider."""
    return torch.promote_types(x.dtype, torch.float32)


class TorchVarlen:
    """Reference varlen part kernel in plain torch, segment by segment (float32 or wider math; CPU tests)."""

    @staticmethod
    def _segments(q, k, cu_q, cu_k, causal):
        for i in range(len(cu_q) - 1):
            q0, q1, k0, k1 = int(cu_q[i]), int(cu_q[i + 1]), int(cu_k[i]), int(cu_k[i + 1])
            if q1 == q0:
                continue
            allowed = torch.ones(q1 - q0, k1 - k0, dtype=torch.bool, device=q.device)  # [t, k]
            if causal:  # bottom-right aligned, as flash-attn
                allowed = allowed.tril(diagonal=(k1 - k0) - (q1 - q0))
            yield slice(q0, q1), slice(k0, k1), allowed

    @staticmethod
    def _expand(x: torch.Tensor, heads: int) -> torch.Tensor:
        return x.to(_wide(x)).repeat_interleave(heads // x.shape[1], dim=1)  # [k, h, d]

    def forward(self, q, k, v, cu_q, cu_k, max_q, max_k, causal, scale):
        """Output ``[T, h, d]`` and log-sum-exp ``[h, T]`` float32 (``-inf`` for queries without keys)."""
        h = q.shape[1]
        out = torch.zeros(q.shape, dtype=_wide(q), device=q.device)  # [T, h, d]
        lse = torch.full((h, q.shape[0]), float("-inf"), dtype=_wide(q), device=q.device)  # [h, T]
        for qs, ks, allowed in self._segments(q, k, cu_q, cu_k, causal):
            kk, vv = self._expand(k[ks], h), self._expand(v[ks], h)  # [k, h, d]
            scores = torch.einsum("qhd,khd->hqk", q[qs].to(_wide(q)), kk) * scale  # [h, t, k]
            scores = scores.masked_fill(~allowed, float("-inf"))
            seg_lse = scores.logsumexp(-1)  # [h, t]
            probs = (scores - seg_lse[..., None]).exp()  # [h, t, k]
            out[qs] = torch.einsum("hqk,khd->qhd", probs, vv)
            lse[:, qs] = seg_lse
        return out.to(q.dtype), lse

    def backward(self, do, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, causal, scale):
        """``dq [T, h, d]``, ``dk``/``dv`` ``[K, h_kv, d]`` of this part, given the merged output and lse."""
        h, rep = q.shape[1], q.shape[1] // k.shape[1]
        dq = torch.zeros(q.shape, dtype=_wide(q), device=q.device)  # [T, h, d]
        dk = torch.zeros(k.shape[0], h, k.shape[2], dtype=_wide(q), device=q.device)  # [K, h, d]
        dv = torch.zeros_like(dk)  # [K, h, d]
        delta = (do.to(_wide(q)) * out.to(_wide(q))).sum(-1).T  # [h, T]
        for qs, ks, allowed in self._segments(q, k, cu_q, cu_k, causal):
            qq, kk, vv = q[qs].to(_wide(q)), self._expand(k[ks], h), self._expand(v[ks], h)
            scores = torch.einsum("qhd,khd->hqk", qq, kk) * scale  # [h, t, k]
            probs = (scores - lse[:, qs, None]).exp() * allowed  # [h, t, k]
            g = do[qs].to(_wide(q))  # [t, h, d]
            dv[ks] += torch.einsum("hqk,qhd->khd", probs, g)
            dp = torch.einsum("qhd,khd->hqk", g, vv)  # [h, t, k]
            ds = probs * (dp - delta[:, qs, None]) * scale  # [h, t, k]
            dq[qs] += torch.einsum("hqk,khd->qhd", ds, kk)
            dk[ks] += torch.einsum("hqk,qhd->khd", ds, qq)
        fold = (k.shape[0], k.shape[1], rep, k.shape[2])
        return dq.to(q.dtype), dk.view(fold).sum(2).to(k.dtype), dv.view(fold).sum(2).to(v.dtype)


class FlashVarlen:
    """flash-attn 2's varlen kernels (``pip install flash-attn``; never run in this project's CI).

    Forward: the public ``flash_attn_varlen_func(..., return_attn_probs=True)``; backward: its
    ``_flash_attn_varlen_backward`` (the only entry that takes an output and log-sum-exp from outside),
    called by keyword after reading its signature, which changed across 2.x releases.

    Raises:
        ImportError: If flash-attn is not installed.
    """

    def __init__(self) -> None:
        from flash_attn import flash_attn_interface  # optional dependency: imported here only

        self._api = flash_attn_interface

    def forward(self, q, k, v, cu_q, cu_k, max_q, max_k, causal, scale):
        """Output ``[T, h, d]`` and log-sum-exp ``[h, T]`` float32."""
        out, lse, _ = self._api.flash_attn_varlen_func(
            q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=scale, causal=causal, return_attn_probs=True
        )
        if tuple(lse.shape) != (q.shape[1], q.shape[0]):
            raise RuntimeError(
                f"flash-attn returned a log-sum-exp of shape {tuple(lse.shape)}, not [heads, tokens] "
                f"{(q.shape[1], q.shape[0])} (flash-attn >= 2.5 needed); use model.attn_implementation=sdpa"
            )
        return out, lse

    def backward(self, do, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, causal, scale):
        """The part's ``dq``, ``dk``, ``dv`` given the merged ``out`` and ``lse``."""
        # zeros: keys of a span without packed tokens get no query, and may not be written
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        args = dict(
            dout=do.contiguous(), q=q, k=k, v=v, out=out, softmax_lse=lse, dq=dq, dk=dk, dv=dv,
            cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q, max_seqlen_k=max_k, dropout_p=0.0,
            softmax_scale=scale, causal=causal, window_size=(-1, -1), window_size_left=-1,
            window_size_right=-1, softcap=0.0, alibi_slopes=None, deterministic=False, rng_state=None,
        )  # fmt: skip
        params = inspect.signature(self._api._flash_attn_varlen_backward).parameters
        missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in args]
        if missing:
            raise RuntimeError(
                f"this flash-attn's _flash_attn_varlen_backward takes {missing}, unknown to longact_pl "
                "(written for flash-attn 2.5-2.8); use model.attn_implementation=flex_attention"
            )
        self._api._flash_attn_varlen_backward(**{n: a for n, a in args.items() if n in params})
        return dq, dk, dv


class MergedVarlen(torch.autograd.Function):
    """Attention of the packed tokens over "own prompt + own row" from two varlen part calls (exact)."""

    @staticmethod
    def forward(ctx, q, k, v, plan: VarlenPlan, part, scale: float):
        """``q [T, h, d]``, ``k``/``v`` ``[sum(P_s) + T, h_kv, d]`` -> ``[T, h, d]``."""
        p = plan.num_prompt_keys
        calls = [
            (slice(0, p), plan.prompt_cu_q, plan.prompt_cu_k, plan.prompt_max_q, plan.prompt_max_k, False),
            (slice(p, None), plan.own_cu, plan.own_cu, plan.own_max, plan.own_max, True),
        ]
        outs = [
            part.forward(q, k[ks], v[ks], cq, ck, mq, mk, causal, scale)
            for ks, cq, ck, mq, mk, causal in calls
        ]
        lse = torch.logaddexp(outs[0][1], outs[1][1])  # [h, T]
        out = sum(o.to(lse.dtype) * (part_lse - lse).exp().T[..., None] for o, part_lse in outs)  # [T, h, d]
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan, ctx.part, ctx.scale, ctx.calls = plan, part, scale, calls
        return out

    @staticmethod
    def backward(ctx, do):
        """Each part's kernel backward with the merged output and lse; ``dq`` summed, ``dk``/``dv`` joined."""
        q, k, v, out, lse = ctx.saved_tensors
        dq, dks, dvs = torch.zeros_like(q, dtype=_wide(q)), [], []
        for ks, cq, ck, mq, mk, causal in ctx.calls:
            pq, pk, pv = ctx.part.backward(do, q, k[ks], v[ks], out, lse, cq, ck, mq, mk, causal, ctx.scale)
            dq += pq.to(dq.dtype)
            dks.append(pk)
            dvs.append(pv)
        return dq.to(q.dtype), torch.cat(dks), torch.cat(dvs), None, None, None


def varlen_attention(q, k, v, plan: VarlenPlan, part, scale: float) -> torch.Tensor:
    """:class:`MergedVarlen` on Hugging Face tensors: ``q [1, h, T, d]``, ``k``/``v`` ``[1, h_kv, K, d]``.

    Returns:
        ``[1, T, h, d]`` (what an attention function returns).
    """
    q, k, v = (x[0].transpose(0, 1).contiguous() for x in (q, k, v))  # [T, h, d], [K, h_kv, d] x 2
    out = MergedVarlen.apply(q, k, v, plan, part, scale)  # [T, h, d]
    return out.unsqueeze(0)
