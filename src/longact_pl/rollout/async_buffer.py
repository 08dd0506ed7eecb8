"""Version-tagged rollouts for asynchronous training (pure: no threads, no Lightning).

A *policy version* counts the weight publishes of a run: version ``v`` is the policy after ``v`` RL steps
(``v = 0``: the weights at start). The batch trained at step ``k`` is trained by version ``k``; each of its
completion tokens was sampled by some version ``<= k``, and its *lag* is ``k - version``. With partial
rollouts (``rollout.round_tokens``) one completion may span several versions: generation is paused at a
weight update and resumed with the new weights, so its tokens carry different versions.

:class:`PartialRollouts` holds completions being generated round by round (tokens, sampler log-probs and
versions per token); :func:`staleness_metrics` turns the versions of a trained batch into the per-step
``train/async/*`` metrics; :func:`check_lag` enforces ``rollout.max_staleness``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from longact_pl.metric_reduce import Metric
from longact_pl.rollout.types import RolloutBatch


class StalenessError(RuntimeError):
    """A batch would be trained with more policy versions of lag than ``rollout.max_staleness`` allows."""


@dataclass
class VersionedRollout:
    """One generated batch and the policy versions that sampled it.

    Attributes:
        index: The RL step (this process's count) the batch is trained at.
        batch: ``[N, ...]`` the rollouts; ``behaviour_logp`` are the sampler's log-probs of each token under
            the version that sampled it.
        token_versions: ``[N, C]`` long, the version that sampled each completion token (``-1`` at padding).
        generate_s: Seconds the engine spent generating it.
        started: ``time.perf_counter()`` when the engine started it (overlap checks; 0: not recorded).
        finished: ``time.perf_counter()`` when the engine finished it.
    """

    index: int
    batch: RolloutBatch
    token_versions: torch.Tensor
    generate_s: float = 0.0
    started: float = 0.0
    finished: float = 0.0

    @property
    def oldest(self) -> int:
        """The oldest version that sampled a real token (the batch's start version when it has none)."""
        real = self.token_versions[self.token_versions >= 0]  # [tokens]
        return int(real.min()) if real.numel() else int(self.token_versions.max().clamp(min=0))


def check_lag(rollout: VersionedRollout, train_version: int, max_staleness: int) -> None:
    """Refuse to train ``rollout`` at ``train_version`` when a token lags more than ``max_staleness``.

    Raises:
        StalenessError: Naming the batch, the lag and the setting.
    """
    lag = train_version - rollout.oldest
    if lag > max_staleness or lag < 0:
        raise StalenessError(
            f"batch {rollout.index} was sampled by policy version {rollout.oldest} and would be trained by "
            f"version {train_version}: a lag of {lag}, outside [0, rollout.max_staleness={max_staleness}]"
        )


def staleness_metrics(
    token_versions: torch.Tensor, mask: torch.Tensor, train_version: int
) -> dict[str, Metric]:
    """``train/async/*`` of one trained batch (each a :class:`Metric` that combines over ranks).

    Args:
        token_versions: ``[N, C]`` version per completion token.
        mask: ``[N, C]`` 1 for real completion tokens.
        train_version: The version training on the batch.

    Returns:
        ``lag_mean`` (tokens' mean lag), ``lag_max``, ``version_span_max`` (most versions one completion
        spans, minus 1) and ``partial_frac`` (completions that span more than one version).
    """
    keep = mask.bool()  # [N, C]
    lag = (train_version - token_versions).float()  # [N, C]
    tokens = float(keep.sum())
    rows = keep.any(-1)  # [N]
    big, small = torch.iinfo(torch.long).max, torch.iinfo(torch.long).min
    newest = torch.where(keep, token_versions, small).amax(-1)  # [N]
    oldest = torch.where(keep, token_versions, big).amin(-1)  # [N]
    span = torch.where(rows, newest - oldest, 0)  # [N]
    return {
        "train/async/lag_mean": Metric(float(lag[keep].mean()) if tokens else 0.0, "mean", tokens),
        "train/async/lag_max": Metric(float(lag[keep].max()) if tokens else 0.0, "max"),
        "train/async/version_span_max": Metric(float(span.max()) if len(span) else 0.0, "max"),
        "train/async/partial_frac": Metric(
            float((span > 0).float()[rows].mean()) if rows.any() else 0.0, "mean", float(rows.sum())
        ),
    }


class PartialRollouts:
    """Completions generated round by round, each token tagged with the version that sampled it.

    Rows are ``B * G`` completions in prompt-group order. A row is *done* when it produced an EOS or
    ``budget`` tokens; :meth:`add_round` appends one round's tokens for the rows still running.

    Args:
        prompts: The B prompts (token ids).
        group_size: G.
        budget: Most completion tokens per row (``rollout.max_new_tokens``).
        eos_ids: Tokens that end a completion.
    """

    def __init__(self, prompts: list[list[int]], group_size: int, budget: int, eos_ids: list[int]) -> None:
        self.prompts, self.group_size, self.budget = prompts, group_size, budget
        self.eos_ids = set(eos_ids)
        n = len(prompts) * group_size
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.logps: list[list[float]] = [[] for _ in range(n)]
        self.versions: list[list[int]] = [[] for _ in range(n)]
        self.done = [False] * n
        self.rounds = 0

    def running(self) -> list[int]:
        """Rows still generating."""
        return [i for i, d in enumerate(self.done) if not d]

    def row_prompt(self, row: int) -> list[int]:
        """What a running row continues from: its prompt followed by its tokens so far."""
        return self.prompts[row // self.group_size] + self.tokens[row]

    def room(self, row: int) -> int:
        """Tokens the row may still generate."""
        return self.budget - len(self.tokens[row])

    def add_round(self, rows: list[int], batch: RolloutBatch, version: int) -> None:
        """Append one round's completions for ``rows`` (``batch`` row ``j`` continues ``rows[j]``).

        Args:
            rows: The rows that generated this round.
            batch: Their new tokens (``completion_mask`` marks them, up to and including an EOS).
            version: The policy version that sampled them.
        """
        if len(rows) != batch.completion_mask.shape[0]:
            raise ValueError(f"{len(rows)} rows but a round of {batch.completion_mask.shape[0]} completions")
        width = batch.prompt_width
        for j, row in enumerate(rows):
            n = int(batch.completion_mask[j].sum())
            new = batch.input_ids[j, width : width + n].tolist()
            self.tokens[row] += new
            self.logps[row] += batch.behaviour_logp[j, :n].tolist()
            self.versions[row] += [version] * n
            self.done[row] = (n > 0 and new[-1] in self.eos_ids) or self.room(row) <= 0 or n == 0
        self.rounds += 1

    def finish(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every row as padded tensors: ``(tokens [N, C], logps [N, C], versions [N, C], lengths [N])``.

        Padding: token 0 (the caller masks by ``lengths``), log-prob 0, version ``-1``.
        """
        width = max(1, max(len(t) for t in self.tokens))
        n = len(self.tokens)
        tokens = torch.zeros(n, width, dtype=torch.long)  # [N, C]
        logps = torch.zeros(n, width, dtype=torch.float32)  # [N, C]
        versions = torch.full((n, width), -1, dtype=torch.long)  # [N, C]
        for i in range(n):
            k = len(self.tokens[i])
            tokens[i, :k] = torch.tensor(self.tokens[i], dtype=torch.long)
            logps[i, :k] = torch.tensor(self.logps[i], dtype=torch.float32)
            versions[i, :k] = torch.tensor(self.versions[i], dtype=torch.long)
        lengths = torch.tensor([len(t) for t in self.tokens], dtype=torch.long)  # [N]
        return tokens, logps, versions, lengths
