import functools

import pytest
import torch

from longact_pl.optim import (
    build_optimizer,
    check_optimizer_settings,
    kernel_choice,
    linear_warmup,
    optimizer_step,
)

ADAMW = functools.partial(torch.optim.AdamW, lr=0.1, weight_decay=0.0, fused=None, foreach=None)


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(8, 8)


def _adamw(model, warmup_steps=0):
    opt = build_optimizer(ADAMW, model.parameters())
    return opt, linear_warmup(opt, warmup_steps)


def test_later_forwards_in_one_autocast_region_see_the_updated_weights():
    model, x = _model(), torch.randn(4, 8)
    opt, sched = _adamw(model)
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
    opt, _ = _adamw(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(x)
        before.sum().backward()
        opt.step()
        stale = model(x)
    assert torch.equal(stale, before)


def test_linear_warmup_then_constant():
    opt, sched = _adamw(_model(), warmup_steps=4)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        optimizer_step(opt, sched)
    assert lrs == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])


def _train(factory, steps=4):
    """Weights after ``steps`` AdamW steps on fixed random gradients (a few tensors of different sizes)."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*s, generator=gen)) for s in ((64, 32), (32,), (7, 5, 3))]
    opt = build_optimizer(factory, params)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen) * 1e-3
        opt.step()
    return opt, [p.detach().clone() for p in params]


def test_cpu_auto_kernel_is_foreach_and_bit_identical_to_the_per_tensor_loop():
    """The default (``fused: null``) on CPU must not change a run's weights: foreach gives torch's
    per-tensor loop's floats exactly (the fused CPU kernel rounds differently, so it is opt-in)."""
    kw = dict(lr=1e-2, betas=(0.9, 0.999), weight_decay=0.01)
    auto, auto_weights = _train(functools.partial(torch.optim.AdamW, **kw, fused=None, foreach=None))
    assert auto.defaults["foreach"] is True and not auto.defaults["fused"]
    _, loop_weights = _train(functools.partial(torch.optim.AdamW, **kw, foreach=False))
    assert all(torch.equal(a, b) for a, b in zip(auto_weights, loop_weights))
    fused, fused_weights = _train(functools.partial(torch.optim.AdamW, **kw, fused=True, foreach=None))
    assert fused.defaults["fused"] is True  # opt-in; close to, not necessarily equal to, the loop's
    assert all(torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(fused_weights, loop_weights))


def test_kernel_choice_per_device_and_explicit_settings():
    cpu = [torch.zeros(2)]
    assert kernel_choice(ADAMW, cpu) == {"foreach": True}
    meta = [torch.empty(2, device="meta")]
    assert kernel_choice(ADAMW, meta) == {}  # neither kernel is known there: torch's defaults
    assert kernel_choice(functools.partial(ADAMW, foreach=False), cpu) == {}  # the config chose
    assert kernel_choice(functools.partial(torch.optim.AdamW, lr=0.1), cpu) == {}  # no kernel keys


@pytest.mark.parametrize("cls", [torch.optim.SGD, torch.optim.RMSprop, torch.optim.Adagrad])
def test_any_torch_optimizer_builds_with_the_default_node_keywords(cls):
    """``module.optimizer._target_=<class>`` works with the default node's keys (RMSprop has no ``fused``)."""
    factory = functools.partial(cls, lr=0.1, weight_decay=0.0, fused=None, foreach=None)
    check_optimizer_settings(factory, functools.partial(linear_warmup, warmup_steps=2))
    model = _model()
    before = model.weight.detach().clone()
    opt = build_optimizer(factory, model.parameters())
    assert type(opt) is cls
    model(torch.randn(4, 8)).sum().backward()
    opt.step()
    assert not torch.equal(model.weight, before)


@pytest.mark.parametrize(
    ("factory", "error", "match"),
    [
        (functools.partial(torch.optim.AdamW, lr="abc"), TypeError, "module.optimizer.lr must be a float"),
        (functools.partial(torch.optim.AdamW, lr=0.0), ValueError, "module.optimizer.lr must be > 0"),
        (
            functools.partial(torch.optim.SGD, lr=0.1, betas=[0.9, 0.9]),
            TypeError,
            r"module.optimizer \(SGD\)",
        ),
        (functools.partial(torch.optim.AdamW, lr=0.1, betas=[1.5, 0.9]), ValueError, "Invalid beta"),
        (torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))]), TypeError, "_partial_: true"),
    ],
)
def test_bad_optimizer_settings_name_the_field(factory, error, match):
    with pytest.raises(error, match=match):
        check_optimizer_settings(factory, None)


def test_negative_warmup_is_refused():
    with pytest.raises(ValueError, match="module.scheduler.warmup_steps must be >= 0"):
        check_optimizer_settings(ADAMW, functools.partial(linear_warmup, warmup_steps=-1))
