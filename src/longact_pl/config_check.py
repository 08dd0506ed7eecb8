"""Type-check a composed config against its components' constructors before anything is built.

Hydra checks nothing about ``_target_`` arguments until it calls them, and some are called only after the
model has loaded (the LightningModule, the DataModule): ``module.lr=abc`` then fails minutes later with
``'<=' not supported``. :func:`check_types` walks every node with a ``_target_``, reads the constructor's
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

from hydra.utils import get_object
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
