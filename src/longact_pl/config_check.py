"""Type-check a composed config against its components' constructors before anything is built.

Hydra checks nothing about ``_target_`` arguments until it calls them, and some are called only after the
model has loaded (the LightningModule, the DataModule): ``module.learner.micro_batch_size=2.5`` then fails
minutes later. :func:`check_types` walks every node with a ``_target_``, reads the constructor's
annotations and checks the simple ones (``int``, ``float``, ``bool``, lists and tuples of them, and their
``Optional`` forms), naming the config field. A scalar where a list is expected (``data.train.lengths=1024``)
becomes a one-element list.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from typing import Any

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

_SCALARS = (bool, int, float)
_SEQUENCES = (list, tuple, collections.abc.Sequence)


def _hints(target: Any) -> dict[str, Any]:
    """Evaluated annotations of ``target``'s constructor (names imported only for type checkers: ``Any``)."""
    fn = target.__init__ if inspect.isclass(target) else target
    unknown: dict[str, Any] = {}
    for _ in range(32):
        try:
            return typing.get_type_hints(fn, localns=unknown)
        except NameError as err:
            if not err.name or err.name in unknown:
                return {}
            unknown[err.name] = Any
        except Exception:  # noqa: BLE001 - annotations we cannot evaluate are simply not checked
            return {}
    return {}


def _optional(hint: Any) -> tuple[Any, bool]:
    """``(hint without None, whether None is allowed)``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return (args[0] if len(args) == 1 else hint), len(args) < len(typing.get_args(hint))
    return hint, False


def _a(kind: type) -> str:
    return f"an {kind.__name__}" if kind is int else f"a {kind.__name__}"


def _scalar_ok(kind: type, value: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # float


def _element(hint: Any) -> type | None:
    """Element type of ``list[int]``, ``Sequence[float]``, ``tuple[float, float]``, ``tuple[int, ...]``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # list[int] | tuple[int, ...]
        kinds = {_element(a) for a in typing.get_args(hint)}
        return kinds.pop() if len(kinds) == 1 else None
    if origin not in _SEQUENCES:
        return None
    args = {a for a in typing.get_args(hint) if a is not Ellipsis}
    return args.pop() if len(args) == 1 and next(iter(args)) in _SCALARS else None


def _check_field(node: DictConfig, key: str, hint: Any, field: str) -> None:
    hint, nullable = _optional(hint)
    value = node[key]
    if value is None:
        if not nullable and (hint in _SCALARS or _element(hint)):
            raise TypeError(f"{field} must be {_a(hint) if hint in _SCALARS else 'a list'}, got null")
        return
    if hint in _SCALARS:
        if not _scalar_ok(hint, value):
            raise TypeError(f"{field} must be {_a(hint)}, got {value!r}")
        return
    kind = _element(hint)
    if kind is None:
        return
    if not isinstance(value, (list, tuple, ListConfig)):
        if not _scalar_ok(kind, value):
            raise TypeError(f"{field} must be a list of {kind.__name__} ('{field}=[...]'), got {value!r}")
        if OmegaConf.is_interpolation(node, key):
            raise TypeError(
                f"{field} must be a list ('{field}=[{value}]'), got {value!r} from an interpolation"
            )
        with open_dict(node):
            node[key] = [value]  # a scalar where a list is expected: a one-element list
        return
    bad = [v for v in value if not _scalar_ok(kind, v)]
    if bad:
        raise TypeError(f"{field} must be a list of {kind.__name__}, got {list(value)!r}")


def check_types(cfg: DictConfig, prefix: str = "") -> None:
    """Check every ``_target_`` node under ``cfg`` against its constructor's annotations (recursively).

    Args:
        cfg: A composed config (or a sub-node).
        prefix: Dotted path of ``cfg`` in the root config, for messages.

    Raises:
        TypeError: Naming the field, its expected type and the value given.
    """
    target = cfg.get("_target_") if isinstance(cfg, DictConfig) else None
    hints: dict[str, Any] = {}
    if isinstance(target, str):
        try:
            hints = _hints(get_object(target))
        except Exception:  # noqa: BLE001 - Hydra reports an unknown _target_ itself when it builds the node
            hints = {}
    for key in list(cfg.keys()):
        if not isinstance(key, str) or key.startswith("_") or key == "hydra":
            continue
        field = f"{prefix}.{key}" if prefix else key
        if OmegaConf.is_missing(cfg, key):
            continue
        if key in hints:
            _check_field(cfg, key, hints[key], field)
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not OmegaConf.is_interpolation(cfg, key):
            check_types(child, field)


def _get(cfg: DictConfig, key: str, default: Any = None) -> Any:
    """``cfg.<key>`` resolved, or ``default`` where the node or a value it interpolates is absent."""
    try:
        value = OmegaConf.select(cfg, key, default=default, throw_on_missing=False)
    except Exception:  # noqa: BLE001 - an interpolation into an absent node: not this check's to report
        return default
    return default if value is None else value


def _check_sequence_parallel(cfg: DictConfig) -> None:
    """Sequence parallelism: a size >= 1, only under FSDP (``LongActFSDP``), dividing the world size."""
    field = "trainer.strategy.sequence_parallel_size"
    size = _get(cfg, field, 1)
    if not isinstance(size, int) or size == 1:
        return
    if size < 1:
        raise ValueError(f"{field} must be >= 1, got {size} (1 = off)")
    target = str(_get(cfg, "trainer.strategy._target_", ""))
    if not target.endswith("LongActFSDP"):
        raise ValueError(
            f"{field}={size} needs strategy=fsdp (trainer.strategy._target_={target or None} has no "
            f"sequence-parallel groups); use strategy=fsdp, or {field}=1"
        )
    devices, nodes = _get(cfg, "trainer.devices"), _get(cfg, "trainer.num_nodes", 1)
    if isinstance(devices, int) and isinstance(nodes, int) and (devices * nodes) % size:
        world = devices * nodes
        raise ValueError(
            f"{field}={size} must divide the world size ({world} = trainer.devices x trainer.num_nodes); "
            f"use {field}={max(d for d in range(1, world + 1) if world % d == 0 and d <= size)} or change "
            "trainer.devices"
        )


def _build(node: DictConfig) -> Any:
    """``instantiate(node)``, re-raising a constructor's own ``ValueError`` / ``TypeError`` unwrapped."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node)
    except InstantiationException as err:
        if isinstance(err.__cause__, (ValueError, TypeError)):
            raise err.__cause__ from None
        raise


def _check_module(cfg: DictConfig) -> None:
    """``module``'s typed settings (built and checked once, by their own constructors) and the optimizer.

    ``LongActModule`` is built after the model loads; the dataclasses of its nested nodes and the optimizer
    / schedule constructors are cheap, so they are built here to fail before anything is loaded or written.
    """
    module = cfg.get("module")
    if not isinstance(module, DictConfig):
        return
    from longact_pl.optim import check_optimizer_settings

    for name in ("learner", "logprobs", "guards", "validation"):
        node = module.get(name)
        if isinstance(node, DictConfig) and "_target_" in node:
            _build(node)
    optimizer, scheduler = module.get("optimizer"), module.get("scheduler")
    if isinstance(optimizer, DictConfig):
        if "_target_" not in optimizer or not optimizer.get("_partial_", False):
            raise ValueError(
                "module.optimizer needs a _target_ (a torch.optim class) and _partial_: true (the parameters "
                "are given once the model is configured)"
            )
        check_optimizer_settings(_build(optimizer), _build(scheduler) if scheduler else None)
    budget = _get(cfg, "module.learner.micro_batch_tokens")
    if isinstance(budget, int):
        from longact_pl.minibatch import check_token_budget

        new_tokens = _get(cfg, "rollout.max_new_tokens", 0)
        check_token_budget(budget, _get(cfg, "module.learner.max_prompt_tokens"), new_tokens or 0)


def _check_sampler(cfg: DictConfig) -> None:
    """A sampler whose log-probs describe what the trainer computes (see ``check_training_sampler``)."""
    rollout = cfg.get("rollout")
    if not isinstance(rollout, DictConfig) or "_target_" not in rollout:
        return
    from longact_pl.algos.correction import check_training_sampler

    try:
        engine = get_object(rollout._target_)
    except Exception:  # noqa: BLE001 - Hydra reports an unknown _target_ itself when it builds the node
        return
    # a stand-in of the engine's class (its name is what the error shows) with the fields the check reads
    sampler = type(getattr(engine, "__name__", "rollout"), (), {})()
    sampler.top_p, sampler.top_k = _get(cfg, "rollout.top_p", 1.0), _get(cfg, "rollout.top_k", 0)
    # rollout.mode=async samples with a copy of the policy: an external sampler (rollout/async_loop.py)
    sampler.external = bool(getattr(engine, "external", False)) or _get(cfg, "rollout.mode") == "async"
    level, low, high = (_get(cfg, f"correction.{k}") for k in ("level", "reject_low", "reject_high"))
    if isinstance(level, DictConfig):  # a level class (conf/correction): the error names it as it prints
        level = instantiate(level)
    correction = types.SimpleNamespace(
        active=level is not None or low is not None or high is not None,
        level=level, reject_low=low, reject_high=high,
    )  # fmt: skip
    check_training_sampler(sampler, correction if isinstance(cfg.get("correction"), DictConfig) else None)


def _check_async(cfg: DictConfig) -> None:
    """``rollout.mode=async`` samples with a full copy of the policy: no FSDP shards, no sequence parallelism.

    The same refusal as ``rollout.async_hook.check_placement`` at the first step, made before anything exists.
    """
    if _get(cfg, "rollout.mode") != "async":
        if _get(cfg, "rollout.placement", "colocated") != "colocated":
            raise ValueError(
                "rollout.placement=disaggregated places the sampler of rollout.mode=async in its own "
                "process; set rollout.mode=async (with rollout.max_staleness=0 for the synchronous "
                "schedule) or rollout.placement=colocated"
            )
        return
    from longact_pl.rollout.async_placement import check_async_placement

    check_async_placement(
        str(_get(cfg, "rollout._target_", "")), _get(cfg, "rollout.placement", "colocated"),
        _get(cfg, "rollout.engine_device"), _get(cfg, "rollout.round_tokens"),
        _get(cfg, "rollout.sleep_level", 0), _get(cfg, "rollout.engine_kwargs.tensor_parallel_size", 1),
    )  # fmt: skip
    if str(_get(cfg, "trainer.strategy._target_", "")).endswith("LongActFSDP"):
        raise ValueError(
            "rollout.mode=async keeps a full copy of the policy for the sampler thread, which FSDP-sharded "
            "weights do not allow in this version: use strategy=ddp (or one device), or rollout.mode=sync"
        )


def _check_masking(cfg: DictConfig) -> None:
    """``masking.norms=frozen`` freezes the q/k norms of the masked projections: it needs them as targets."""
    if _get(cfg, "masking.norms") != "frozen":
        return
    from longact_pl.masking.fused import FUSED_NAMES
    from longact_pl.masking.targets import ROLES

    targets = [str(t).rpartition(".")[2] for t in _get(cfg, "masking.targets", [])]
    if not any(t in ROLES or t in FUSED_NAMES for t in targets):
        raise ValueError(
            f"masking.norms=frozen needs q_proj/k_proj among masking.targets (got {targets}); add them, or "
            "use masking.norms=dense"
        )


def _check_tensor_parallel(cfg: DictConfig) -> None:
    """The engines' TP groups (``rollout/placement.py``) tile each node's ranks; one process: any TP size."""
    tp = _get(cfg, "rollout.engine_kwargs.tensor_parallel_size", 1)
    devices, nodes = _get(cfg, "trainer.devices"), _get(cfg, "trainer.num_nodes", 1)
    if not all(isinstance(v, int) for v in (tp, devices, nodes)) or (devices * nodes == 1 and tp >= 1):
        return
    from longact_pl.rollout.placement import place_engines

    place_engines(devices * nodes, devices, devices, tp)  # raises naming the field and the fix


def check_combinations(cfg: DictConfig) -> None:
    """Refuse option combinations the code does not support, from the composed config alone.

    Pure: nothing is built, loaded or written, so a refused run leaves no run directory, ``config.yaml``
    or model behind. Each error names the options and the nearest supported setting. Combinations that
    depend on the model (attention heads, sliding windows) are checked once its config is known.

    Raises:
        ValueError: The first unsupported combination found.
    """
    _check_sequence_parallel(cfg)
    _check_module(cfg)
    _check_sampler(cfg)
    _check_async(cfg)
    _check_masking(cfg)
    _check_tensor_parallel(cfg)
