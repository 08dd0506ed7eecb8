"""The policy's optimizer (any ``torch.optim`` class, by config), its learning-rate schedule, one step.

``module.optimizer`` is a ``_partial_`` constructor (``torch.optim.AdamW`` by default): Hydra fills in the
hyper-parameters, :func:`build_optimizer` the parameters once the model sits on its device, and chooses the
update kernel where the config leaves it to us (``fused: null`` / ``foreach: null``):

* every device torch has a fused kernel for, CPU included (AdamW, Adam, SGD, Adagrad): ``fused=True``, one
  kernel over all parameters (what Hugging Face's ``Trainer`` and TRL use by default). On CPU it is ~5x
  faster than foreach on a small Llama (``scripts/bench/bench_peer.py``'s optimizer line).
* an optimizer without a fused kernel (RMSprop, ...) on CPU: ``foreach=True``.

The fused kernel rounds differently from torch's per-tensor loop (last-bit differences, ~1e-8 on 1e-5
updates, ``tests/test_optim.py``). ``module.optimizer.fused=false`` keeps the floats of the earlier CPU
default (foreach, or torch's per-tensor loop: the same floats bit for bit) -- the setting to use for
bit-for-bit comparisons with runs made before fused became the CPU default.

The master weights stay fp32 either way (``longact_pl.precision``); the kernel only changes how the same
fp32 update is computed.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Sequence

import torch

# ``module.optimizer``: parameters -> optimizer (Hydra's ``_partial_: true`` gives a functools.partial)
OptimizerFactory = Callable[..., torch.optim.Optimizer]
# ``module.scheduler``: optimizer -> learning-rate schedule
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]
# Device types whose params get ``fused=True`` when the config leaves the kernel to us
_FUSED_AUTO = ("cpu", "cuda", "xpu", "mps", "hpu")


def _keywords(factory: OptimizerFactory) -> dict:
    return dict(factory.keywords) if isinstance(factory, functools.partial) else {}


def check_optimizer_settings(optimizer: OptimizerFactory, scheduler: SchedulerFactory | None) -> None:
    """Refuse optimizer / schedule settings that would fail or train nothing, naming the config field.

    Beyond ``lr``, the check builds both on one dummy parameter, so whatever the chosen ``torch.optim`` class
    refuses (``betas`` out of range, a keyword it does not take) fails here, before a model loads.

    Raises:
        TypeError: ``module.optimizer`` is not a constructor waiting for the parameters, ``lr`` is not a
            number, or the class does not take one of the node's keywords.
        ValueError: ``module.optimizer.lr <= 0``, or another value the optimizer or schedule refuses.
    """
    if not callable(optimizer) or isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"module.optimizer must build an optimizer from the parameters (a `_partial_: true` node), got "
            f"{type(optimizer).__name__}"
        )
    lr = _keywords(optimizer).get("lr")
    if lr is not None:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)):
            raise TypeError(f"module.optimizer.lr must be a float, got {lr!r}")
        if lr <= 0:
            raise ValueError(f"module.optimizer.lr must be > 0, got {lr}")
    if scheduler is not None and not callable(scheduler):
        raise TypeError(f"module.scheduler must be a `_partial_: true` node, got {type(scheduler).__name__}")
    target = getattr(getattr(optimizer, "func", optimizer), "__name__", "the optimizer")
    try:
        opt = build_optimizer(optimizer, [torch.nn.Parameter(torch.zeros(1))])
    except (TypeError, ValueError) as err:
        raise type(err)(f"module.optimizer ({target}) refuses its settings: {err}") from None
    if scheduler is not None:
        scheduler(opt)  # its own errors name its field (linear_warmup: module.scheduler.warmup_steps)


def kernel_choice(factory: OptimizerFactory, params: Sequence[torch.Tensor]) -> dict[str, bool]:
    """The update kernel for ``factory(params)`` when the config leaves it to us (``fused``/``foreach`` null).

    Returns ``{"fused": True}`` on devices with fused kernels (CPU included) for optimizers that have one,
    ``{"foreach": True}`` on CPU for those that do not (bit-identical to the per-tensor loop), ``{}`` where
    the config chose a kernel itself, names neither keyword, or the optimizer takes neither.
    """
    keywords = _keywords(factory)
    auto = [k for k in ("fused", "foreach") if k in keywords and keywords[k] is None]
    if not auto or any(keywords.get(k) is not None for k in ("fused", "foreach")):
        return {}
    target = factory.func if isinstance(factory, functools.partial) else factory
    try:
        accepted = inspect.signature(target).parameters
    except (TypeError, ValueError):  # no signature to read: torch's own defaults
        return {}
    devices = {p.device.type for p in params}
    return _auto_kernel(accepted, devices, all(torch.is_floating_point(p) for p in params))


def _auto_kernel(accepted, devices: set[str], floating: bool) -> dict[str, bool]:
    """The rule of :func:`kernel_choice`: fused where the devices have it, else foreach on CPU, else {}."""
    if devices and devices <= set(_FUSED_AUTO) and "fused" in accepted and floating:
        return {"fused": True}
    if devices == {"cpu"} and "foreach" in accepted:
        return {"foreach": True}
    return {}


def planned_kernel(node, device: str) -> str:
    """The update kernel :func:`build_optimizer` will pick for a ``module.optimizer`` node on ``device``.

    For the memory plan (``fused``, ``foreach`` or ``single_tensor``: ``longact_pl.memory.plan.Settings``),
    before anything is built. ``node``: the config node (``_target_``, ``fused``, ``foreach``; ``None``: the
    default AdamW); ``device``: ``cpu`` or ``cuda``.
    """
    node = node or {}
    fused, foreach = node.get("fused"), node.get("foreach")
    if fused:
        return "fused"
    if foreach:
        return "foreach"
    if fused is None and foreach is None:  # left to kernel_choice
        target = node.get("_target_") or "torch.optim.AdamW"
        try:
            from hydra.utils import get_class

            accepted = inspect.signature(get_class(target)).parameters
        except Exception:  # an unresolvable target fails later, in check_optimizer_settings, naming it
            accepted = {}
        choice = _auto_kernel(accepted, {device}, floating=True)
        if choice:
            return next(iter(choice))  # "fused" or "foreach"
    return "foreach" if device == "cuda" else "single_tensor"  # torch's own default


def build_optimizer(factory: OptimizerFactory, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """``factory(params)`` with the update kernel chosen for the parameters' device (:func:`kernel_choice`).

    A ``null`` ``fused`` / ``foreach`` is not passed on (``None`` is torch's default for both wherever they
    exist, and ``torch.optim.RMSprop`` has no ``fused``): ``module.optimizer._target_`` may name any
    ``torch.optim`` class.
    """
    params = list(params)
    if not isinstance(factory, functools.partial):
        return factory(params)
    choice = kernel_choice(factory, params)
    keywords = {k: v for k, v in factory.keywords.items() if not (k in ("fused", "foreach") and v is None)}
    return factory.func(*factory.args, params, **keywords, **choice)


def linear_warmup(
    optimizer: torch.optim.Optimizer, warmup_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A linear warm-up over ``warmup_steps`` optimizer steps, constant afterwards (``module.scheduler``).

    Step ``s`` (0-based) runs at ``lr * min(1, (s + 1) / warmup_steps)``.

    Raises:
        ValueError: ``module.scheduler.warmup_steps < 0``.
    """
    if warmup_steps < 0:
        raise ValueError(f"module.scheduler.warmup_steps must be >= 0, got {warmup_steps}")
    warm = max(1, warmup_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warm))


def optimizer_step(optimizer, scheduler) -> None:
    """Step the optimizer, drop autocast's cached low-precision weights, step the schedule.

    Autocast caches the bf16 copy of each weight for its whole region, which spans a training step: with
    several optimizer steps per RL step (``ppo_epochs > 1`` or mini-batches) later forwards would otherwise
    run on the weights from before the update.
    """
    optimizer.step()
    torch.clear_autocast_cache()
    scheduler.step()


def clip_gradients(module, optimizer, max_norm: float) -> None:
    """Clip the global gradient norm to ``max_norm`` through Lightning (``module.clip_gradients``).

    Lightning's ``bf16-mixed`` plugin refuses to clip for an optimizer that unscales gradients inside its
    step (a fused one: :func:`kernel_choice`'s default), a refusal meant for fp16's ``GradScaler``; bf16 has
    no scaler, so there the precision plugin's plain norm clip runs (the same ``clip_grad_norm_`` over the
    optimizer's parameters). fp16 with a fused optimizer keeps Lightning's refusal.
    """
    from lightning.pytorch.plugins.precision import MixedPrecision, Precision

    plugin = module.trainer.precision_plugin
    if isinstance(plugin, MixedPrecision) and plugin.scaler is None:
        Precision.clip_gradients(plugin, optimizer, max_norm)  # norm clipping, the default algorithm
        return
    module.clip_gradients(optimizer, gradient_clip_val=max_norm, gradient_clip_algorithm="norm")
