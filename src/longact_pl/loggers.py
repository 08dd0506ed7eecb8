"""Logger factories whose heavy dependencies are imported lazily (wandb lives only here)."""

from __future__ import annotations

import os


def wandb_logger(project: str, name: str | None, save_dir: str, default_mode: str = "offline", **kwargs):
    """A Lightning ``WandbLogger``; offline unless ``WANDB_MODE`` is set.

    Args:
        project: W&B project.
        name: Run name.
        save_dir: Folder for the ``wandb/`` files.
        default_mode: ``offline`` or ``online``, used when ``WANDB_MODE`` is unset.
        **kwargs: Passed to ``WandbLogger``.

    Raises:
        ImportError: With the install command, if wandb is missing.
    """
    try:
        import wandb
    except ImportError as err:
        raise ImportError("logger=wandb needs wandb: `.venv/bin/pip install -e '.[wandb]'`") from err
    from lightning.pytorch.loggers import WandbLogger

    if wandb.run is not None:  # the previous job of an in-process Hydra multirun: give this run its own
        wandb.finish()
    mode = os.environ.get("WANDB_MODE", default_mode)
    os.makedirs(save_dir, exist_ok=True)
    return WandbLogger(project=project, name=name, save_dir=save_dir, offline=mode == "offline", **kwargs)
