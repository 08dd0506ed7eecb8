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
    """Placed before SaliencyMask: sees the gradient before masking, and the targets' training activations."""

    def __init__(self):
        self.grads, self.l1 = [], {}

    def setup(self, trainer, pl_module, stage):
        for name in TARGETS:
            pl_module.policy.get_submodule(name).register_forward_hook(self._hook(pl_module, name))

    def _hook(self, pl_module, name):
        def hook(mod, args, out):
            if pl_module.stats_token_mask is not None:
                self.l1[name] = self.l1.get(name, 0) + out.detach()[pl_module.stats_token_mask].abs().sum(0)

        return hook

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads.append({n: pl_module.policy.get_submodule(n).weight.grad.clone() for n in TARGETS})


def test_logged_shares_equal_hand_sums_on_the_current_batch():
    recorder, cb = _Recorder(), SaliencyMask(ratio=0.3, calib_samples=1)
    trainer = fit(StubModule(models.llama()), StubData(models.VOCAB), [recorder, cb], max_steps=1)
    masks = cb.masks
    kept = sum(float(g[masks[n]].square().sum()) for n, g in recorder.grads[0].items())
    total = sum(float(g.square().sum()) for g in recorder.grads[0].values())
    logged = trainer.callback_metrics
    assert float(logged["mask/grad_share_kept"]) == pytest.approx(kept / total, rel=1e-5)
    assert 0.0 < kept / total < 1.0
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
    assert meter.take().tolist() == [0.0, 0.0]  # a measured step counts once its optimizer step runs
    meter.measure([w], lambda: None)  # (a skipped step is measured again on the next one)
    meter.commit()
    assert meter.take().tolist() == [10.0, 10.0]
    assert shares(torch.tensor([9.0, 10.0, 1.0, 4.0])) == pytest.approx(
        {"mask/grad_share_kept": 0.9, "mask/act_l1_share_kept": 0.25}
    )
    assert shares(torch.tensor([0.0, 0.0, 1.0, 4.0])) == {"mask/act_l1_share_kept": 0.25}  # no gradient yet
