"""One RL sampling phase: rollouts, rewards, and DAPO-style dynamic sampling."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from longact_pl.distributed import DistOps, LocalOps
from longact_pl.rewards.scoring import RewardErrors, score
from longact_pl.rewards.types import RewardFn
from longact_pl.rollout.types import RolloutBatch, RolloutEngine, concat_rollouts

log = logging.getLogger(__name__)


@dataclass
class ScoredRollout:
    """Rollouts with their rewards.

    Attributes:
        batch: The kept rollouts (``[N, ...]``).
        rewards: ``[N]`` task rewards after shaping (the training signal).
        raw_rewards: ``[N]`` task rewards before shaping.
        first_round_rewards: ``[N0]`` unshaped rewards of the first round (logged as the reward curve).
        rounds: Generation rounds used.
        dropped_groups: Groups dropped because all their rewards were equal.
    """

    batch: RolloutBatch
    rewards: torch.Tensor
    raw_rewards: torch.Tensor
    first_round_rewards: torch.Tensor
    rounds: int = 1
    dropped_groups: int = 0


def more_prompt_batches(datamodule, seed: int) -> Iterator[list[dict]]:
    """Endless further prompt batches for dynamic sampling, from an independently shuffled loader.

    Args:
        datamodule: The trainer's data module (its ``extra_dataloader(seed=...)`` when it has one, else its
            training loader).
        seed: The loader's shuffle seed (the ranks of a sequence-parallel group pass the same one).
    """
    extra = getattr(datamodule, "extra_dataloader", None)
    loader = extra(seed=seed) if extra else datamodule.train_dataloader()
    while True:
        yield from loader


def sample_and_score(
    engine: RolloutEngine,
    policy: torch.nn.Module,
    tokenizer,
    reward_fn: RewardFn,
    samples: list[dict],
    shape: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    keep_groups: Callable[[torch.Tensor, int], torch.Tensor] | None,
    max_rounds: int,
    more_samples: Callable[[], Iterator[list[dict]]] | None,
    seed: int,
    errors: RewardErrors | None = None,
    dist: DistOps | None = None,
) -> ScoredRollout | None:
    """Generate and score; with ``keep_groups`` drop uniform groups and sample more prompts.

    With several data-parallel ranks (``dist.world_size > 1``) the ranks stay in lock-step, because
    generation and every later forward are collectives under FSDP: a rank keeps generating rounds while any
    rank still needs groups (its surplus is cut), and every rank keeps the same number of groups, the
    smallest any rank has (all ranks skip the step together when that is 0).

    Args:
        engine: Rollout engine.
        policy: The current policy.
        tokenizer: Its tokenizer.
        reward_fn: Reward callable.
        samples: This step's prompt dicts.
        shape: Reward shaping ``(rewards [N], lengths [N]) -> [N]`` (e.g. DAPO's overlong penalty).
        keep_groups: ``(rewards [N], G) -> bool [N / G]``; ``None`` keeps every group.
        max_rounds: Cap on generation rounds (dynamic sampling).
        more_samples: Factory of an iterator of further prompt batches for extra rounds.
        seed: Sampling seed of the first round; round r uses ``seed + r``.
        errors: Collects reward-function failures (see :func:`score`).
        dist: Data-parallel collectives (``dist.min`` and ``dist.share`` are called by every rank in the same
            order); ``None`` on a single process.

    Returns:
        The scored rollouts, or ``None`` if dynamic sampling kept no group at all (on some rank).
    """
    dist = dist or LocalOps()
    agree = dist.min
    group = engine.group_size
    want = len(samples)
    kept: list[RolloutBatch] = []
    kept_rewards: list[torch.Tensor] = []
    kept_raw: list[torch.Tensor] = []
    first: torch.Tensor | None = None
    dropped, rounds, extra_iter = 0, 0, None
    batch_samples = samples
    while True:
        ro = engine.generate(policy, tokenizer, [s["prompt_ids"] for s in batch_samples], seed=seed + rounds)
        rounds += 1
        raw = score(reward_fn, ro.completions, batch_samples, group, errors)  # [n]
        # a sequence-parallel group trains on one batch: its first rank's rollouts and rewards (the ranks
        # generated for the same prompts, but sampling need not be bit-identical across devices)
        ro, raw = dist.share((ro, raw))
        shaped = shape(raw, ro.completion_lengths.float().cpu())  # [n]
        first = raw if first is None else first
        keep = keep_groups(shaped, group) if keep_groups else torch.ones(len(batch_samples), dtype=torch.bool)
        dropped += int((~keep).sum())
        rows = keep.repeat_interleave(group)  # [n]
        kept.append(ro.select_groups(keep))
        kept_rewards.append(shaped[rows])
        kept_raw.append(raw[rows])
        n_kept = sum(len(r) for r in kept_rewards) // group
        done = keep_groups is None or n_kept >= want or rounds >= max_rounds or more_samples is None
        if agree(int(done)):  # every rank is done
            break
        extra_iter = extra_iter or more_samples()
        batch_samples = next(extra_iter)
    size = agree(min(n_kept, want))  # groups every rank keeps
    if size == 0:
        log.warning("dynamic sampling kept no group after %d rounds; skipping this step", rounds)
        return None
    batch = concat_rollouts([b for b in kept if len(b.completions)], tokenizer.pad_token_id)
    rewards, raw = torch.cat(kept_rewards), torch.cat(kept_raw)  # [N], [N]
    if n_kept > size:  # extra rounds over-filled the batch, or another rank kept fewer groups
        batch = batch.select_groups(torch.arange(n_kept) < size)
        rewards, raw = rewards[: size * group], raw[: size * group]  # [size * G]
    return ScoredRollout(
        batch=batch,
        rewards=rewards,
        raw_rewards=raw,
        first_round_rewards=first,
        rounds=rounds,
        dropped_groups=dropped,
    )
