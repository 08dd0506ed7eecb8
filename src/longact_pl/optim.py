"""The policy's optimizer (any ``torch.optim`` class, by config), its learning-rate schedule, one step.

``module.optimizer`` is a ``_partial_`` constructor (``torch.optim.AdamW`` by default): Hydra fills in the
hyper-parameters, :func:`build_optimizer` the parameters once the model sits on its device, and chooses the
update kernel where the config leaves it to us (``fused: null`` / ``foreach: null``):

* CUDA (and other devices torch has fused kernels for): ``fused=True``, one kernel over all parameters (what
  Hugging Face's ``Trainer`` and TRL use by default).
* CPU: ``foreach=True``. It gives the same floats, bit for bit, as torch's per-tensor default (measured:
  ``tests/test_optim.py``), so a CPU run's weights do not change with this choice. torch's fused CPU AdamW
  is ~3x faster on a 135M model but rounds differently (last-bit differences, ~1e-8 on 1e-5 updates); set
  ``module.optimizer.fused=true`` for it.

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
_FUSED_AUTO = ("cuda", "xpu", "mps", "hpu")


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

    Returns ``{"fused": True}`` on devices with fused kernels, ``{"foreach": True}`` on CPU (bit-identical to
    the per-tensor loop, see the module docstring), ``{}`` where the config chose a kernel itself, names
    neither keyword, or the optimizer takes neither.
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
    floating = all(torch.is_floating_point(p) for p in params)
    if devices and devices <= set(_FUSED_AUTO) and "fused" in accepted and floating:
        return {"fused": True}
    if devices == {"cpu"} and "foreach" in accepted:
        return {"foreach": True}
    return {}


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
