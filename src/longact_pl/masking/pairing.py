"""Q-K pairing: whether the query and key masks of a layer are chosen apart or together.

An attention logit is a sum over the channels of a head of ``q_d * k_d``. With ``pairing=independent`` (the
default, what LongAct describes) ``W_Q`` and ``W_K`` each keep their own most salient units, so a trained
query channel may meet a frozen key channel. With ``pairing=joint`` a unit ``u`` (channel, RoPE pair or head)
of key/value head ``j`` is scored from both sides, ``score_k(j, u) * mean_h score_q(h, u)`` over the query
heads ``h`` that read head ``j`` under GQA (``h // (H/G) == j``, as ``repeat_kv`` expands them), and the kept
``(j, u)`` set is kept in ``W_K`` and, for each of those query heads, in ``W_Q``. The product is the scale of
the logit term the unit carries, and does not depend on how large queries are relative to keys; the kept
share of ``W_Q`` rows equals the kept share of ``W_K`` rows.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from longact_pl.masking.fused import FUSED_NAMES

PAIRINGS = ("independent", "joint")


def check_pairing(pairing: str, targets: Sequence[str]) -> str:
    """Validate ``pairing`` against the configured target names.

    Raises:
        ValueError: On an unknown pairing, or ``joint`` without both a query and a key projection.
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"masking.pairing={pairing!r} is not supported; use one of {list(PAIRINGS)}")
    leaves = {t.rpartition(".")[2] for t in targets}
    if pairing == "joint" and not ({"q_proj", "k_proj"} <= leaves or leaves & set(FUSED_NAMES)):
        raise ValueError(
            f"masking.pairing=joint keeps the same units in W_Q and W_K, so masking.targets={list(targets)} "
            "must hold both a query and a key projection (e.g. [q_proj, k_proj] or [qkv_proj]); "
            "use masking.pairing=independent to mask a single projection"
        )
    return pairing


def joint_scores(query: Tensor, key: Tensor, query_heads: int, kv_heads: int) -> Tensor:
    """Score each unit of each key/value head from its key and the query heads that read it.

    Args:
        query: Unit scores of ``W_Q``, head-major (``query_heads`` x units per head).  # [H*U]
        key: Unit scores of ``W_K``, head-major.  # [G*U]
        query_heads: ``H``.
        kv_heads: ``G`` (divides ``H``).

    Returns:
        Joint unit scores, ``key * mean over the H/G query heads of head j``.  # [G*U]
    """
    if query_heads % kv_heads or query.numel() * kv_heads != key.numel() * query_heads:
        raise ValueError(
            f"masking.pairing=joint: {query_heads} query heads with {query.numel()} units and {kv_heads} "
            f"key heads with {key.numel()} units do not pair up"
        )
    units = key.numel() // kv_heads
    q = query.float().view(kv_heads, query_heads // kv_heads, units).mean(1)  # [G, U]
    return (q * key.float().view(kv_heads, units)).flatten()  # [G*U]


def split_joint(keep: Tensor, query_heads: int, kv_heads: int) -> tuple[Tensor, Tensor]:
    """Expand kept (key head, unit) pairs to the query and key unit masks.

    Args:
        keep: Bool mask over joint units.  # [G*U]
        query_heads: ``H``.
        kv_heads: ``G``.

    Returns:
        ``(query unit mask [H*U], key unit mask [G*U])``; query head ``h`` keeps what key head
        ``h // (H/G)`` keeps.
    """
    units = keep.numel() // kv_heads
    q = keep.view(kv_heads, 1, units).expand(kv_heads, query_heads // kv_heads, units)  # [G, H/G, U]
    return q.reshape(-1), keep.clone()
