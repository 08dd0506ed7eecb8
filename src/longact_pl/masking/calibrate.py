"""Calibration: run long prompts through the policy (no grad, batch of 1) and collect channel statistics."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule

from longact_pl.masking.stats import ChannelStats, StatsCollector
from longact_pl.masking.targets import Target


def calibration_prompts(owners: Sequence[object], n: int) -> list[list[int]]:
    """``n`` long prompts (token id lists) from the first owner with a ``calibration_prompts(n)`` method.

    Raises:
        AttributeError: If none has it (the data module is expected to).
    """
    for owner in owners:
        fn = getattr(owner, "calibration_prompts", None)
        if callable(fn):
            return [list(p) for p in fn(n)]
    raise AttributeError(
        "SaliencyMask needs `trainer.datamodule.calibration_prompts(n)` (long prompts as token id lists)"
    )


def select_calibration(
    owners: Sequence[object], n: int, min_tokens: int = 0, max_scan: int = 64
) -> tuple[list[list[int]], list[int]]:
    """The first ``n`` calibration prompts with at least ``min_tokens`` tokens, and their source indices.

    Without ``min_tokens`` these are simply the first ``n`` prompts. Otherwise the first ``n``, ``2n``,
    ``4n``... prompts are read (up to ``max_scan * n``, or all the source holds) until ``n`` long ones are
    found.

    Raises:
        ValueError: If fewer than ``n`` prompts are that long, naming ``masking.calib_min_tokens`` and the
            longest prompt found.
    """
    if min_tokens <= 0:
        return calibration_prompts(owners, n), list(range(n))
    pool: list[list[int]] = []
    m, too_many = n, None  # too_many: a count the source cannot give (it holds fewer prompts)
    while True:
        try:
            pool = calibration_prompts(owners, m)
        except ValueError:
            too_many = m
            if m - 1 <= len(pool):  # every prompt of the source has been read
                break
            m = (len(pool) + m) // 2  # bisect towards the source's size
            continue
        enough = sum(len(p) >= min_tokens for p in pool) >= n
        if enough or m >= max_scan * n or (too_many is not None and m + 1 >= too_many):
            break
        m = min(2 * m, max_scan * n) if too_many is None else (m + too_many) // 2
    chosen = [i for i, p in enumerate(pool) if len(p) >= min_tokens][:n]
    if len(chosen) < n:
        longest = max((len(p) for p in pool), default=0)
        raise ValueError(
            f"masking.calib_min_tokens={min_tokens}: only {len(chosen)} of the first {len(pool)} calibration "
            f"prompts have that many tokens (the longest has {longest}), {n} are needed "
            "(masking.calib_samples); lower masking.calib_min_tokens, or give longer prompts "
            "(data.calib_source)"
        )
    return [pool[i] for i in chosen], chosen


def _trunk(policy: nn.Module) -> nn.Module:
    """Return the decoder without the LM head (``policy.model`` for HF LMs), so no ``[T, vocab]`` logits."""
    base = getattr(policy, "base_model", None)
    return base if isinstance(base, nn.Module) and base is not policy else policy


def _runner(policy: nn.Module):
    """A ``ids -> None`` forward: the decoder trunk, or under FSDP2 the root with one logit position.

    An FSDP2 root gathers the shards of its own parameters (embeddings, final norm) in its forward hook, so
    its sub-modules cannot run alone; ``logits_to_keep=1`` keeps the LM head to one ``[1, vocab]`` row.
    """
    if isinstance(policy, FSDPModule):
        return lambda ids: policy(input_ids=ids, use_cache=False, logits_to_keep=1)
    trunk = _trunk(policy)
    return lambda ids: trunk(input_ids=ids, use_cache=False)


@torch.no_grad()
def collect_stats(
    policy: nn.Module,
    targets: Sequence[Target],
    prompts: Sequence[Sequence[int]],
    bf16: bool = False,
    pad_forwards: int = 0,
    units: Mapping[str, Tensor | None] | None = None,
) -> dict[str, ChannelStats]:
    """Per-channel statistics of every target's measured module over all tokens of ``prompts``.

    Args:
        policy: The Hugging Face causal LM.
        targets: Masked targets (read where their ``probe`` says).
        prompts: Token id lists, each run alone (batch of 1, no padding).
        bf16: Run under ``torch.autocast(bfloat16)`` (as bf16 training would).
        pad_forwards: Extra forwards of the first prompt that are not counted (FSDP needs the same number
            of forwards on every rank when ranks calibrate on different numbers of prompts).
        units: Target name -> channel-to-unit map of magnitude-scored units (``rope_pair``), if any.

    Returns:
        Target name -> statistics.

    Raises:
        ValueError: If no prompt is given or a prompt is empty.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("calibration needs at least one non-empty prompt")
    current: list[Tensor | None] = [None]
    collector = StatsCollector({t.name: t.probe for t in targets}, gate=lambda: current[0], units=units)
    device = next(policy.parameters()).device
    forward = _runner(policy)
    was_training = policy.training
    policy.eval()
    collector.attach()
    try:
        for i, prompt in enumerate([*prompts, *[prompts[0]] * pad_forwards]):
            ids = torch.tensor([list(prompt)], dtype=torch.long, device=device)  # [1, T]
            counted = i < len(prompts)
            current[0] = torch.ones_like(ids, dtype=torch.bool) if counted else None  # [1, T]
            amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
            with amp:
                forward(ids)
    finally:
        current[0] = None
        collector.detach()
        policy.train(was_training)
    missing = [t.name for t in targets if t.name not in collector.stats]
    if missing:
        raise RuntimeError(f"calibration forwards never reached {missing[:3]}... (hooks saw no output)")
    return collector.stats
