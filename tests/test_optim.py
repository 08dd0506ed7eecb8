import functools

import pytest
import torch

from longact_pl.optim import (
    build_optimizer,
    check_optimizer_settings,
    kernel_choice,
    linear_warmup,
    optimizer_step,
    planned_kernel,
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


def test_cpu_auto_kernel_is_fused_and_fused_false_keeps_the_per_tensor_loops_floats():
    """The default (``fused: null``) on CPU is torch's fused kernel, as on CUDA: last-bit different from the
    per-tensor loop (a deliberate change); ``fused: false`` (the old default's floats) is bit-identical."""
    kw = dict(lr=1e-2, betas=(0.9, 0.999), weight_decay=0.01)
    auto, auto_weights = _train(functools.partial(torch.optim.AdamW, **kw, fused=None, foreach=None))
    assert auto.defaults["fused"] is True and not auto.defaults["foreach"]
    _, loop_weights = _train(functools.partial(torch.optim.AdamW, **kw, foreach=False))
    assert all(torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(auto_weights, loop_weights))
    assert not all(torch.equal(a, b) for a, b in zip(auto_weights, loop_weights))  # the last bits differ
    old, old_weights = _train(functools.partial(torch.optim.AdamW, **kw, fused=False, foreach=None))
    assert not old.defaults["fused"]
    assert all(torch.equal(a, b) for a, b in zip(old_weights, loop_weights))
    _, foreach_weights = _train(functools.partial(torch.optim.AdamW, **kw, fused=None, foreach=True))
    assert all(torch.equal(a, b) for a, b in zip(foreach_weights, loop_weights))


def test_kernel_choice_per_device_and_explicit_settings():
    cpu = [torch.zeros(2)]
    assert kernel_choice(ADAMW, cpu) == {"fused": True}
    rmsprop = functools.partial(torch.optim.RMSprop, lr=0.1, fused=None, foreach=None)  # no fused kernel
    assert kernel_choice(rmsprop, cpu) == {"foreach": True}
    meta = [torch.empty(2, device="meta")]
    assert kernel_choice(ADAMW, meta) == {}  # neither kernel is known there: torch's defaults
    assert kernel_choice(functools.partial(ADAMW, foreach=False), cpu) == {}  # the config chose
    assert kernel_choice(functools.partial(ADAMW, fused=False), cpu) == {}
    assert kernel_choice(functools.partial(torch.optim.AdamW, lr=0.1), cpu) == {}  # no kernel keys


@pytest.mark.parametrize(
    ("node", "device", "kind"),
    [
        (None, "cpu", "fused"),
        ({"_target_": "torch.optim.AdamW", "fused": None, "foreach": None}, "cuda", "fused"),
        ({"_target_": "torch.optim.RMSprop", "fused": None, "foreach": None}, "cpu", "foreach"),
        ({"_target_": "torch.optim.AdamW", "fused": False, "foreach": None}, "cpu", "single_tensor"),
        ({"_target_": "torch.optim.AdamW", "fused": False, "foreach": None}, "cuda", "foreach"),
        ({"_target_": "torch.optim.AdamW", "fused": None, "foreach": True}, "cpu", "foreach"),
    ],
)
def test_planned_kernel_is_what_build_optimizer_builds(node, device, kind):
    """The memory plan's optimizer kind follows the config as ``build_optimizer`` does."""
    assert planned_kernel(node, device) == kind
    if device == "cpu":
        node = dict(node or {"_target_": "torch.optim.AdamW", "fused": None, "foreach": None})
        cls = getattr(torch.optim, node.pop("_target_").rsplit(".", 1)[1])
        opt = build_optimizer(functools.partial(cls, lr=0.1, **node), [torch.nn.Parameter(torch.zeros(2))])
        built = "fused" if opt.defaults.get("fused") else "foreach" if opt.defaults["foreach"] else "single"
        assert built == kind.replace("single_tensor", "single")


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


def test_a_fused_optimizer_clips_under_bf16_mixed():
    """Lightning's bf16-mixed plugin refuses to clip for a fused optimizer (a GradScaler rule: bf16 has no
    scaler); ``clip_gradients`` clips the global norm to the limit there, as for any other optimizer."""
    from types import SimpleNamespace

    from lightning.pytorch.plugins.precision import MixedPrecision

    from longact_pl.optim import clip_gradients

    model = _model()
    opt = build_optimizer(ADAMW, model.parameters())
    assert opt.defaults["fused"] is True
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    plugin = MixedPrecision("bf16-mixed", "cpu")
    with pytest.raises(RuntimeError, match="fused"):  # what Lightning's own path does
        plugin.clip_gradients(opt, 1.0)
    clip_gradients(SimpleNamespace(trainer=SimpleNamespace(precision_plugin=plugin)), opt, 1.0)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    torch.testing.assert_close(norm, torch.tensor(1.0), rtol=1e-5, atol=0)
