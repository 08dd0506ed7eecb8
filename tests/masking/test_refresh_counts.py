"""LongAct's refreshed statistics count each prompt token once, however the update is micro-batched.

The training forwards feed the statistics (``masking.refresh_every > 0``). A group split over micro-batches
(``module.learner.micro_batch_size`` below the group, or a token budget) runs its prompt once per micro-batch;
only one of those passes may be counted, or the refresh weighs prompt tokens by how the batch was cut.
"""

import pytest
import torch
from safetensors.torch import load_file

from longact_pl.algos.algorithm import GroupPolicyGradient
from longact_pl.learner import TrainBatch
from longact_pl.masking.stats import StatsCollector
from longact_pl.masking.targets import find_targets
from longact_pl.models.hf import load_hf
from longact_pl.train import run
from tests.helpers import compose_train
from tests.test_learner import _learner, _update
from tests.test_micro_batch_tokens import LENGTHS, PROMPTS, _rollouts
from tests.test_train import PARITY

# 3 groups of 3: prompts of 6, 4, 5 real tokens, completions of 11, 8, 8: each counted once
TOKENS = sum(PROMPTS) + sum(sum(g) for g in LENGTHS)  # 15 + 27 = 42


def _stats(model, **learner_kwargs):
    """Statistics of q_proj/k_proj over one update's training forwards, and the gradient it applied."""
    current = [None]
    probes = {t.name: t.probe for t in find_targets(model, ("q_proj", "k_proj"))}
    collector = StatsCollector(probes, gate=lambda: current[0])
    collector.attach()
    learner = _learner(GroupPolicyGradient(kl_coef=0.0), **learner_kwargs)
    learner.add_hook(_Gate(current))
    ro = _rollouts(model.config.vocab_size)
    batch = TrainBatch(ro, torch.linspace(-1.0, 1.0, 9))
    rec, _ = _update(learner, model, batch)
    collector.detach()
    return collector.reset(), rec.grads[0]


class _Gate:
    """A learner hook that only holds the announced real-token mask (the statistics collector's gate)."""

    def __init__(self, current: list) -> None:
        self.current = current

    def on_forward(self, token_mask):
        self.current[0] = token_mask

    def transform_grads(self, params):
        pass

    def after_step(self):
        pass


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


@pytest.mark.slow
def test_a_run_with_split_groups_refreshes_the_whole_group_runs_masks(tmp_path):
    """The issue's case: 2 steps, masks rebuilt after each from the training forwards; micro-batches of 2
    rows split every group of 4. Masks of both refreshes and the final weights equal whole-group micro-batches
    (today the split run counted each prompt twice: other statistics, other masks)."""
    runs = {}
    for name, rows in {"whole": 4, "split": 2}.items():
        d = tmp_path / name
        cfg = compose_train(
            d, PARITY, "data.max_prompt_tokens=400", "masking=saliency", "masking.calib_samples=1",
            "masking.refresh_every=1", "masking.ema=0", "rollout.group_size=4",
            "module.logprobs.pack_completions=false", f"module.learner.micro_batch_size={rows}",
        )  # fmt: skip
        run(cfg, d)
        runs[name] = (load_file(d / "final" / "mask.safetensors"), load_hf(str(d / "final"), dtype="float32"))
    (masks_a, model_a), (masks_b, model_b) = runs["whole"], runs["split"]
    assert masks_a.keys() == masks_b.keys() and masks_a
    for key, mask in masks_a.items():
        assert torch.equal(masks_b[key], mask), key
    for (name, p), q in zip(model_a.model.named_parameters(), model_b.model.parameters()):
        torch.testing.assert_close(q, p, atol=1e-5, rtol=0, msg=name)
