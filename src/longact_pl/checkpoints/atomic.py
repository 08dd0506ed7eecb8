"""Write files so that a failed write (full disk, quota, kill) never replaces a good one.

The data goes to a temporary file in the destination folder (the same filesystem, so the final rename is
atomic; never ``/tmp``, from where a move would copy across filesystems), is flushed and fsynced, and only
then renamed over the destination. On any error the temporary file is removed and the old file is intact.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, fsync it, then rename it to ``path``.

    Args:
        path: Destination file (its folder is created if missing).
        write: Writes the whole content to the binary file it is given.

    Raises:
        OSError: When writing, syncing or renaming fails; ``path`` then still holds its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # make the rename itself durable


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not let a folder be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8, line endings unchanged) to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O whose ``save_checkpoint`` is :func:`atomic_write` of ``torch.save``.

    A full disk during a save leaves the previous ``last.ckpt`` (and no partial file) behind. Loading is
    Lightning's. Set as ``trainer.plugins`` (``conf/trainer/default.yaml``); FSDP's sharded checkpoints
    (``strategy.save_distributed_checkpoint=true``) are written by ``torch.distributed.checkpoint`` instead.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        """Save ``checkpoint`` to ``path`` atomically.

        Raises:
            TypeError: If ``storage_options`` is given (local files only).
            OSError: If the write fails (e.g. ``ENOSPC``), naming the file; the previous one is unchanged.
        """
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options (local files only)")
        try:
            atomic_write(path, lambda f: torch.save(checkpoint, f))
        except (OSError, RuntimeError) as err:
            # torch.save reports a failed write as its zip writer's RuntimeError, the OSError as its context
            cause = err if isinstance(err, OSError) else err.__context__
            if not isinstance(cause, OSError):
                raise
            raise OSError(
                cause.errno,
                f"writing checkpoint {path} failed ({cause.strerror or cause}); the previous file there is "
                "unchanged. Free disk space (or move the run directory) and resume from it",
            ) from err
