import pytest
import torch

from longact_pl.optim import adamw_with_warmup, optimizer_step


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(8, 8)


def test_later_forwards_in_one_autocast_region_see_the_updated_weights():
    model, x = _model(), torch.randn(4, 8)
    opt, sched = adamw_with_warmup(model.parameters(), 0.1, (0.9, 0.999), 0.0, 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x).sum().backward()  # caches the bf16 weight for this region
        optimizer_step(opt, sched)
        after = model(x)  # [4, 8]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fresh = model(x)  # [4, 8]: a new region casts the current weights
    assert torch.equal(after, fresh)


def test_without_clearing_the_cache_autocast_reuses_stale_weights():
    """The failure mode optimizer_step guards against (if this starts failing, autocast stopped caching)."""
    model, x = _model(), torch.randn(4, 8)
    opt, _ = adamw_with_warmup(model.parameters(), 0.1, (0.9, 0.999), 0.0, 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(x)
        before.sum().backward()
        opt.step()
        stale = model(x)
    assert torch.equal(stale, before)


def test_linear_warmup_then_constant():
    opt, sched = adamw_with_warmup(_model().parameters(), 1.0, (0.9, 0.999), 0.0, 4)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        optimizer_step(opt, sched)
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
