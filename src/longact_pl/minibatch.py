"""How one rollout batch is cut into mini-batches (optimizer steps) and micro-batches (forward/backward).

Rows ``g*G .. g*G + G - 1`` of a rollout batch share a prompt. The shared-prefix log-prob pass computes a
prompt once per run of adjacent rows sharing it, so with ``whole_groups`` the shuffle permutes groups (rows
stay together and in order) and micro-batches hold whole groups.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from longact_pl.rollout.types import RolloutBatch


def minibatch_indices(
    num_rows: int, mini_batch_size: int, group_size: int, generator: torch.Generator, whole_groups: bool
) -> list[torch.Tensor]:
    """Row indices of one pass's mini-batches.

    Args:
        num_rows: N, rows of the rollout batch.
        mini_batch_size: Rows per mini-batch (``>= N``: one mini-batch, rows in order).
        group_size: G.
        generator: Source of the shuffle.
        whole_groups: Shuffle groups instead of rows (when N and the mini-batch size are multiples of G).

    Returns:
        Index tensors ``[mini]`` (the last may be shorter) covering ``0 .. N - 1`` once.
    """
    if mini_batch_size >= num_rows:
        return [torch.arange(num_rows)]  # [N]
    if whole_groups and num_rows % group_size == 0 and mini_batch_size % group_size == 0:
        groups = torch.randperm(num_rows // group_size, generator=generator)  # [N / G]
        order = (groups[:, None] * group_size + torch.arange(group_size)).flatten()  # [N]
    else:
        order = torch.randperm(num_rows, generator=generator)  # [N]
    return list(order.split(mini_batch_size))


def micro_batch_rows(micro_batch_size: int, group_size: int, whole_groups: bool) -> int:
    """Rows per forward/backward: with ``whole_groups`` and at least G rows, rounded down to whole groups.

    Rounding down keeps peak memory within what ``micro_batch_size`` allows; below G rows no prompt is
    shared within a micro-batch anyway.
    """
    if whole_groups and micro_batch_size >= group_size:
        return micro_batch_size // group_size * group_size
    return micro_batch_size


class RowMicroBatches:
    """Micro-batches of ``micro_batch_size`` rows; with ``whole_groups`` and at least G rows, whole groups.

    Args:
        micro_batch_size: Rows per forward/backward.
    """

    def __init__(self, micro_batch_size: int) -> None:
        if micro_batch_size < 1:
            raise ValueError(f"module.learner.micro_batch_size must be >= 1, got {micro_batch_size}")
        self.micro_batch_size = micro_batch_size

    def __call__(self, rows: torch.Tensor, rollouts: RolloutBatch, whole_groups: bool) -> list[torch.Tensor]:
        """Consecutive runs of ``rows`` (``[m] -> [r], [r], ...``; see :func:`micro_batch_rows`)."""
        return list(rows.split(micro_batch_rows(self.micro_batch_size, rollouts.group_size, whole_groups)))


def take(tensor: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``tensor[rows]``, as a view (no copy) when ``rows`` is one ascending run ``a, a + 1, ..., b``."""
    if len(rows) == 0:
        return tensor[:0]
    start, n = int(rows[0]), len(rows)
    if int(rows[-1]) - start + 1 == n and bool((rows.diff() == 1).all()):
        return tensor[start : start + n]
    return tensor[rows]


class TokenMicroBatches:
    """Micro-batches by a token budget: consecutive rows while the forwards' tokens stay within it.

    A micro-batch's tokens are what its log-prob pass computes. With ``whole_groups`` (the shared prompt):
    each run of rows of one group costs its real prompt once, plus the completions: their real tokens when
    packed (``packed()``), else every row padded to the micro-batch's longest completion. Without: every row
    padded to the micro-batch's longest prompt and completion. Groups are kept whole; a group over the
    budget is split by completions (its prompt then runs once per micro-batch holding part of it), and a
    micro-batch may end with the first part of the next group.

    Args:
        max_tokens: The budget (``module.learner.micro_batch_tokens``).
        packed: Whether the completions will be packed (asked at every call: the model may not pack).

    Raises:
        ValueError: If ``max_tokens`` is below 1.
    """

    def __init__(self, max_tokens: int, packed: Callable[[], bool] = lambda: False) -> None:
        if max_tokens < 1:
            raise ValueError(
                f"module.learner.micro_batch_tokens must be >= 1 (or null: rows), got {max_tokens}"
            )
        self.max_tokens, self.packed = max_tokens, packed

    def __call__(self, rows: torch.Tensor, rollouts: RolloutBatch, whole_groups: bool) -> list[torch.Tensor]:
        """Consecutive runs of ``rows`` (``[m] -> [r], [r], ...``) within the budget.

        Raises:
            ValueError: If one prompt and one completion alone exceed the budget.
        """
        width = rollouts.prompt_width
        prompt = rollouts.attention_mask[rows, :width].sum(-1).tolist()  # per position in rows
        completion = rollouts.attention_mask[rows, width:].sum(-1).tolist()
        group = (rows // rollouts.group_size).tolist()
        packed = whole_groups and self.packed()

        def cost(part: list[int]) -> int:
            if not part:
                return 0
            if not whole_groups:
                return len(part) * (max(prompt[i] for i in part) + max(completion[i] for i in part))
            prompts = sum(prompt[i] for j, i in enumerate(part) if j == 0 or group[i] != group[part[j - 1]])
            if packed:
                return prompts + sum(completion[i] for i in part)
            return prompts + len(part) * max(completion[i] for i in part)

        units: list[list[int]] = []
        for i in range(len(group)):
            if whole_groups and units and group[i] == group[units[-1][-1]]:
                units[-1].append(i)
            else:
                units.append([i])
        parts: list[list[int]] = []
        current: list[int] = []
        for unit in units:
            if cost(current + unit) <= self.max_tokens:
                current += unit
                continue
            if current:
                parts.append(current)
            current = []
            for i in unit:  # a fresh micro-batch; a group over the budget is split by completions
                if cost(current + [i]) > self.max_tokens:
                    if not current:
                        raise ValueError(
                            f"module.learner.micro_batch_tokens={self.max_tokens} is smaller than one prompt "
                            f"+ one completion ({cost([i])} tokens); raise it to at least "
                            "data.max_prompt_tokens + rollout.max_new_tokens"
                        )
                    parts.append(current)
                    current = []
                current.append(i)
        if current:
            parts.append(current)
        return [rows[part] for part in parts]


def check_token_budget(max_tokens: int, max_prompt_tokens: int | None, max_new_tokens: int) -> None:
    """Refuse a budget that one prompt and one completion of the run's sizes may exceed.

    Raises:
        ValueError: If ``max_tokens < max_prompt_tokens + max_new_tokens`` (or below 1).
    """
    TokenMicroBatches(max_tokens)
    need = (max_prompt_tokens or 0) + max_new_tokens
    if max_tokens < need:
        raise ValueError(
            f"module.learner.micro_batch_tokens={max_tokens} is smaller than one prompt + one completion "
            f"(data.max_prompt_tokens + rollout.max_new_tokens = {need}); raise it to at least {need}"
        )


def prompt_owners(idx: torch.Tensor, group_size: int, num_rows: int) -> torch.Tensor:
    """``[num_rows]`` bool: the first row of each group in the mini-batch ``idx [m]``.

    A micro-batch holding that row counts the group's prompt tokens in LongAct's statistics; the others
    holding part of the group run the prompt without counting it, so each prompt token counts once per
    mini-batch pass, as when the group is one micro-batch.
    """
    rows = idx.sort().values  # [m]
    groups = rows // group_size  # [m]
    first = torch.ones_like(groups, dtype=torch.bool)  # [m]
    first[1:] = groups[1:] != groups[:-1]
    owners = torch.zeros(num_rows, dtype=torch.bool)  # [N]
    owners[rows[first]] = True
    return owners
