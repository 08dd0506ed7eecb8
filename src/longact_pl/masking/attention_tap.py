"""See queries and keys exactly as attention consumes them, through transformers' attention interface.

Hugging Face attention layers compute ``q``/``k`` (projection, optional ``q_norm``/``k_norm``, RoPE) and then
call ``ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager_attention_forward)(module, q,
k, v, ...)``. :func:`tap_attention` registers, under the model's own implementation name, a wrapping function
that hands ``q`` and ``k`` to the observers of that ``module`` and then calls the real function with the same
arguments: no model code is copied, and every other model (and the same model's modules that are not
tapped) passes straight through. Keeping the implementation's name (rather than switching the model to a new
one) keeps the attention mask and every flash-attention code path that dispatches on the name unchanged.
The real function is restored when the last tap on that implementation is removed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from torch import Tensor, nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

Observer = Callable[[Tensor, Tensor], None]  # (query [B, H, T, D], key [B, G, S, D])

_OBSERVERS: dict[int, list[Observer]] = {}  # id(attention module) -> observers
_SAVED: dict[str, tuple[Callable | None, int]] = {}  # implementation -> (its previous local override, taps)


def _model_eager(module: nn.Module) -> Callable:
    """The eager attention function of ``module``'s modeling file (what ``eager`` dispatches to)."""
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if fn is None:
        raise RuntimeError(f"{type(module).__module__} has no eager_attention_forward to call")
    return fn


def _wrap(real: Callable | None) -> Callable:
    """An attention function that shows q/k to the module's observers, then runs ``real``."""

    def attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, *args, **kwargs):
        for observe in _OBSERVERS.get(id(module), ()):
            observe(query, key)
        fn = real if real is not None else _model_eager(module)
        return fn(module, query, key, value, *args, **kwargs)

    attention.longact_tap = True  # type: ignore[attr-defined]
    return attention


class TapHandle:
    """Removes one observer (and restores the real attention function after the last one)."""

    def __init__(self, module: nn.Module, observer: Observer, implementation: str) -> None:
        self._key, self._observer, self._implementation = id(module), observer, implementation
        self._live = True

    def remove(self) -> None:
        """Stop observing (idempotent)."""
        if not self._live:
            return
        self._live = False
        observers = _OBSERVERS.get(self._key, [])
        if self._observer in observers:
            observers.remove(self._observer)
        if not observers:
            _OBSERVERS.pop(self._key, None)
        previous, taps = _SAVED[self._implementation]
        if taps > 1:
            _SAVED[self._implementation] = (previous, taps - 1)
            return
        del _SAVED[self._implementation]
        local = ALL_ATTENTION_FUNCTIONS._local_mapping  # the instance overrides set by `[name] = fn`
        if previous is None:
            local.pop(self._implementation, None)
        else:
            local[self._implementation] = previous


def tap_attention(module: nn.Module, observer: Observer) -> TapHandle:
    """Call ``observer(query, key)`` whenever ``module`` runs its attention function.

    Args:
        module: A Hugging Face attention layer (it has ``config._attn_implementation``).
        observer: Receives ``query`` ``[B, H, T, D]`` and ``key`` ``[B, G, S, D]`` (``S`` includes cached
            positions before the ``T`` new ones), after q/k norms and RoPE. It must not modify them.

    Returns:
        A handle whose ``remove()`` stops the observation.
    """
    config = getattr(module, "config", None)
    implementation = getattr(config, "_attn_implementation", None) or "eager"
    if implementation not in _SAVED:
        local = ALL_ATTENTION_FUNCTIONS._local_mapping
        real = ALL_ATTENTION_FUNCTIONS.get(implementation)  # None: "eager", the model's default
        _SAVED[implementation] = (local.get(implementation), 1)
        ALL_ATTENTION_FUNCTIONS[implementation] = _wrap(real)
    else:
        previous, taps = _SAVED[implementation]
        _SAVED[implementation] = (previous, taps + 1)
    _OBSERVERS.setdefault(id(module), []).append(observer)
    return TapHandle(module, observer, implementation)
