"""``StrategyOps`` over a strategy whose ``reduce`` works in place, as Lightning's does (``all_reduce``).

On CPU (gloo) ``tensor.to(root_device)`` is the tensor itself, so reducing it in place overwrote the caller's
tensor: ``Learner.plan`` then read its own span counts back as the agreed ones, gave the lock-step dummies
0 spans, and a rank with fewer token-budget micro-batches ran fewer forwards than the other (a hang with
padded completions, an IndexError with packed ones; found by the parity matrix, DP2 x token budget).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from longact_pl.distributed import StrategyOps
from tests.test_learner import GRPO, _learner
from tests.test_micro_batch_tokens import _rollouts


def _strategy(other: torch.Tensor | None = None) -> SimpleNamespace:
    """Two ranks; the other rank holds ``other`` (max) or the same values (sum); reduce is in place."""

    def reduce(tensor, reduce_op):
        if reduce_op == "max":
            return tensor.copy_(torch.maximum(tensor, other if other is not None else tensor))
        return tensor.mul_(2)

    return SimpleNamespace(world_size=2, root_device=torch.device("cpu"), reduce=reduce)


def test_sum_and_max_leave_the_callers_tensor_alone():
    mine = torch.tensor([1, 0, 3])
    ops = StrategyOps(_strategy(other=torch.tensor([2, 2, 2])))
    assert ops.max(mine).tolist() == [2, 2, 3] and mine.tolist() == [1, 0, 3]
    assert ops.sum(mine).tolist() == [2, 0, 6] and mine.tolist() == [1, 0, 3]


def test_a_rank_with_fewer_token_budget_micro_batches_pads_them_with_dummy_spans():
    ro = _rollouts(49152)  # 3 groups of 3 rows; a budget of 17 packed tokens gives 3 micro-batches of 1 group
    learner = _learner(GRPO(), micro_batch_tokens=17, pack=True)
    rows = torch.arange(ro.completion_mask.shape[0])
    alone = learner.plan(rows, ro, StrategyOps(SimpleNamespace(world_size=1)))
    assert [p.tolist() for p, _ in alone] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    other = torch.zeros(len(rows), dtype=torch.long)
    other[:5] = 1  # the other rank runs 5 micro-batches of 1 span
    parts = learner.plan(rows, ro, StrategyOps(_strategy(other)))
    assert [len(p) for p, _ in parts] == [3, 3, 3, 0, 0]
    assert [pad for _, pad in parts] == [0, 0, 0, 1, 1]  # two empty micro-batches, one dummy span each
