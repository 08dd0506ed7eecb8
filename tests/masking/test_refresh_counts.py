"""LongAct's refreshed statistics count each prompt token once, however the update is micro-batched.

The training forwards feed the statistics (``masking.refresh_every > 0``). A group split over micro-batches
(``module.micro_batch_size`` below the group, or a token budget) runs its prompt once per micro-batch; only
one of those passes may be counted, or the refresh weighs prompt tokens by how the batch was cut.
"""

import pytest
import torch

from longact_pl.algos.algorithm import GroupPolicyGradient
from longact_pl.learner import TrainBatch
from longact_pl.masking.stats import StatsCollector
from longact_pl.masking.targets import find_targets
from tests.test_learner import _learner, _update
from tests.test_micro_batch_tokens import LENGTHS, PROMPTS, _rollouts

# 3 groups of 3: prompts of 6, 4, 5 real tokens, completions of 11, 8, 8: each counted once
TOKENS = sum(PROMPTS) + sum(sum(g) for g in LENGTHS)  # 15 + 27 = 42


def _stats(model, **learner_kwargs):
    """Statistics of q_proj/k_proj over one update's training forwards, and the gradient it applied."""
    current = [None]
    probes = {t.name: t.probe for t in find_targets(model, ("q_proj", "k_proj"))}
    collector = StatsCollector(probes, gate=lambda: current[0])
    collector.attach()
    pack = learner_kwargs.pop("pack", False)
    learner = _learner(GroupPolicyGradient(kl_coef=0.0), **learner_kwargs)
    learner.logprobs.pack = pack
    ro = _rollouts(model.config.vocab_size)
    batch = TrainBatch(ro, torch.linspace(-1.0, 1.0, 9))
    rec = _update_with_hook(learner, model, batch, lambda m: current.__setitem__(0, m))
    collector.detach()
    return collector.reset(), rec.grads[0]


def _update_with_hook(learner, model, batch, hook):
    update = learner.update
    learner.update = lambda *a, **kw: update(*a, **kw, token_mask_hook=hook)
    rec, _ = _update(learner, model, batch)
    return rec


@pytest.mark.parametrize(
    "split",
    [
        {"micro_batch_size": 2},  # rows [0, 1], [2, 3], ...: every group split
        {"micro_batch_tokens": 15, "pack": True},  # group 0 split by completions: [0], [1, 2]
        {"micro_batch_tokens": 18, "pack": False},
    ],
    ids=["rows-2", "tokens-packed", "tokens-padded"],
)
def test_split_groups_count_each_prompt_token_once(tiny, split):
    model = tiny.model.train()
    whole, whole_grad = _stats(model, micro_batch_size=9)
    part, part_grad = _stats(model, **split)
    assert {s.count for s in whole.values()} == {TOKENS}
    assert {s.count for s in part.values()} == {TOKENS}  # today: each split group's prompt once per part
    for name, s in whole.items():
        torch.testing.assert_close(part[name].sum_abs, s.sum_abs, rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(part[name].sum_sq, s.sum_sq, rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(part[name].max_abs, s.max_abs, rtol=1e-5, atol=1e-6, msg=name)
    for name, grad in whole_grad.items():  # the update itself is unchanged by the split
        scale = float(grad.abs().max())
        torch.testing.assert_close(part_grad[name], grad, rtol=1e-4, atol=1e-5 * scale, msg=name)
