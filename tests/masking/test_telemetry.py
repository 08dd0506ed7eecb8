"""Per-step telemetry: kept share of the Q/K gradient and of the activation L1 mass, against hand sums."""

import lightning.pytorch as pl
import pytest
import torch

from longact_pl.masking import SaliencyMask
from longact_pl.masking.telemetry import GradShare, shares
from tests.masking import models
from tests.masking.stub import StubData, StubModule, fit

TARGETS = [f"model.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in ("q", "k")]


class _Recorder(pl.Callback):
    """Registered with the learner before SaliencyMask: sees the gradient before masking, and the targets'
    training activations (the real tokens the learner announces)."""

    def __init__(self):
        self.grads, self.l1, self.whole = [], {}, []
        self.token_mask = None

    def setup(self, trainer, pl_module, stage):
        self.policy = pl_module.policy
        pl_module.learner.add_hook(self)
        for name in TARGETS:
            pl_module.policy.get_submodule(name).register_forward_hook(self._hook(name))

    def _hook(self, name):
        def hook(mod, args, out):
            if self.token_mask is not None:
                self.l1[name] = self.l1.get(name, 0) + out.detach()[self.token_mask].abs().sum(0)

        return hook

    def on_forward(self, token_mask):
        self.token_mask = token_mask

    def transform_grads(self, params):
        self.grads.append({n: self.policy.get_submodule(n).weight.grad.clone() for n in TARGETS})
        self.whole.append(sum(float(p.grad.square().sum()) for p in params if p.grad is not None))

    def after_step(self):
        pass


def test_logged_shares_equal_hand_sums_on_the_current_batch():
    recorder, cb = _Recorder(), SaliencyMask(ratio=0.3, calib_samples=1)
    trainer = fit(StubModule(models.llama()), StubData(models.VOCAB), [recorder, cb], max_steps=1)
    masks = cb.masks
    kept = sum(float(g[masks[n]].square().sum()) for n, g in recorder.grads[0].items())
    total = sum(float(g.square().sum()) for g in recorder.grads[0].values())
    logged = trainer.callback_metrics
    assert float(logged["mask/grad_share_kept"]) == pytest.approx(kept / total, rel=1e-5)
    assert 0.0 < kept / total < 1.0
    # the whole model's update: all squared gradients before masking; the mask removes total - kept
    assert recorder.whole[0] > total
    removed = float(logged["mask/update_share_removed"])
    assert removed == pytest.approx((total - kept) / recorder.whole[0], rel=1e-5)
    act_kept = sum(float(v[masks[n]].sum()) for n, v in recorder.l1.items())
    act_total = sum(float(v.sum()) for v in recorder.l1.values())
    assert float(logged["mask/act_l1_share_kept"]) == pytest.approx(act_kept / act_total, rel=1e-5)


def test_grad_share_measures_before_masking_and_counts_committed_steps_only():
    w = torch.nn.Parameter(torch.zeros(4, 2))
    w.grad = torch.tensor([[3.0, 0.0], [0.0, 4.0], [1.0, 0.0], [0.0, 0.0]])  # rows 1, 3 frozen
    meter = GradShare()

    def mask():
        w.grad[[1, 3]] = 0

    meter.measure([w], mask)
    assert float(w.grad.square().sum()) == 10.0  # the applied gradient
    assert meter.take().tolist() == [0.0, 0.0, 0.0]  # a measured step counts once its optimizer step runs
    other = torch.nn.Parameter(torch.zeros(2))
    other.grad = torch.tensor([2.0, 4.0])  # a non-target parameter: 20 more in the whole model
    w.grad = torch.tensor([[3.0, 0.0], [0.0, 4.0], [1.0, 0.0], [0.0, 0.0]])
    meter.measure([w], mask, everything=[w, other])  # (a skipped step is measured again on the next one)
    meter.commit()
    assert meter.take().tolist() == [10.0, 26.0, 46.0]  # kept 9 + 1, total 26, whole 26 + 20
    assert shares(torch.tensor([10.0, 26.0, 46.0, 1.0, 4.0])) == pytest.approx(
        {
            "mask/grad_share_kept": 10 / 26,
            "mask/update_share_removed": 16 / 46,
            "mask/act_l1_share_kept": 0.25,
        }
    )
    no_grad = shares(torch.tensor([0.0, 0.0, 0.0, 1.0, 4.0]))
    assert no_grad == {"mask/act_l1_share_kept": 0.25}  # no gradient yet
