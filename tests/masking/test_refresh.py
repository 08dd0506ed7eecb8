"""Refresh: rows entering the mask do not take oversized first Adam steps."""

import pytest
import torch

import longact_pl.masking.callback as callback
from longact_pl.masking import SaliencyMask
from tests.masking import models
from tests.masking.stub import StubData, StubModule, fit

REFRESH = 100  # late enough that Adam's global bias correction no longer hides zero moments


def _first_update_ratio():
    """Largest first update of a row entering the mask / median update of rows kept all along (same step)."""
    policy = models.llama()
    cb = SaliencyMask(ratio=0.3, calib_samples=1, refresh_every=REFRESH, ema=0.0, telemetry=False)
    module = StubModule(policy, lr=1e-3, weight_decay=0.0, record_from=REFRESH - 1)
    fit(module, StubData(models.VOCAB, batches=10), [cb], max_steps=REFRESH + 1)
    (last_static, first_new) = module.steps  # optimizer steps REFRESH and REFRESH + 1 (1-based)
    entering, stayed = [], []
    for name, new in first_new["masks"].items():
        old = last_static["masks"][name]  # the calibration mask, used for every step so far
        w = name + ".weight"
        update = (first_new["after"][w] - first_new["before"][w]).abs().mean(1)  # [rows]
        entering.append(update[new & ~old])
        stayed.append(update[new & old])
    entering, stayed = torch.cat(entering), torch.cat(stayed)
    assert entering.numel() > 0 and stayed.numel() > 0
    return float(entering.max() / stayed.median())


@pytest.mark.slow  # 2 x 101 optimizer steps of a tiny model (~8 s)
def test_entering_rows_first_update_is_within_1_5x_of_trained_rows(monkeypatch):
    assert _first_update_ratio() <= 1.5
    # without the warm start the same rows take updates several times a trained row's
    monkeypatch.setattr(callback, "warm_start_rows", lambda *args: 0)
    assert _first_update_ratio() > 2.0
