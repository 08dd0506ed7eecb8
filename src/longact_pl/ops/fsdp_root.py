"""Run a computation that uses a model's parts as if it were the model's own forward (for FSDP2).

The fast log-prob paths call a causal LM's pieces (``model.model`` and the LM head weight) instead of
``model(...)``. Under FSDP2 the root module's parameters (embeddings, final norm, LM head) are gathered by
the root's forward pre-hook and their gradients reduce-scattered by hooks that same forward registers, so
code that bypasses ``model(...)`` would see sharded ``DTensor`` weights and lose their gradients.
:func:`through_root` installs the computation as the root's ``forward`` for one call, so every FSDP2 hook
runs around it exactly as around the model's own forward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn
from torch.distributed.fsdp import FSDPModule

T = TypeVar("T")


def through_root(model: nn.Module, fn: Callable[[], T]) -> T:
    """``fn()``, run inside ``model.__call__`` when ``model`` is an FSDP2 root, else called directly.

    Args:
        model: The (possibly ``fully_shard``-ed) model whose parts ``fn`` uses. ``fn`` must not call
            ``model(...)`` itself (the root's hooks would run twice).
        fn: The computation; takes no arguments (bind them with a closure or ``functools.partial``), reads
            the root's parameters only while it runs, and returns tensors (or tuples of tensors / ``None``).

    Returns:
        What ``fn`` returns.
    """
    if not isinstance(model, FSDPModule):
        return fn()
    own = model.__dict__.get("forward")
    model.forward = fn  # an instance attribute shadows the class's forward for this one call
    try:
        return model()
    finally:
        if own is None:
            del model.forward
        else:
            model.forward = own
