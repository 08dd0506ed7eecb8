"""Switch a model to a registered attention function, with its cache in a context variable, for a block."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

from torch import nn

T = TypeVar("T")


@contextmanager
def attention_switched(model: nn.Module, name: str, active: ContextVar[T | None], cache: T) -> Iterator[None]:
    """Run ``model`` with the attention registered as ``name`` inside the block, ``active`` set to ``cache``.

    Both are restored on exit, also on error (the model's own attention implementation, the variable's
    previous value).
    """
    config = model.config
    saved = config._attn_implementation
    token = active.set(cache)
    try:
        config._attn_implementation = name
        yield
    finally:
        config._attn_implementation = saved
        active.reset(token)
