"""Ending a process that ran gloo collectives without aborting at interpreter shutdown.

A gloo worker thread drops its last reference to a finished collective (and so to the collective's tensors,
whose Python objects need the GIL to be released) a moment after the Python caller's ``wait`` returned. If
that moment falls after interpreter shutdown has begun, the thread cannot take the GIL and the process
aborts ("terminate called without an active exception", exit 134): a finished run reported as a crash, seen
about once in seven 2-node gloo runs (and in the suite's spawned gloo workers). ``destroy_process_group``
does not stop those threads (torch keeps the gloo backends alive in C++ past it), so after destroying the
group the main thread frees what it can (``gc.collect``) and sleeps briefly with the GIL released, letting
every worker finish its release before shutdown.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch.distributed as dist

# Seconds the main thread releases the GIL for after destroying the group
SETTLE_S = 0.2


def close_process_group() -> None:
    """Destroy the default process group (and every other) and let the gloo worker threads settle."""
    dist.destroy_process_group()
    gc.collect()
    time.sleep(SETTLE_S)  # GIL released: the gloo workers finish their last releases


@contextmanager
def process_group_closed_at_end() -> Iterator[None]:
    """:func:`close_process_group` at the end of the block if the block created the default group.

    Lightning leaves the group it creates open. A group that existed before the block (a caller's) is left
    alone.
    """
    created_here = not (dist.is_available() and dist.is_initialized())
    try:
        yield
    finally:
        if created_here and dist.is_available() and dist.is_initialized():
            close_process_group()
