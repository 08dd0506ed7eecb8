"""Which settings a resumed run may change, checked against the config recorded in the checkpoint.

Every checkpoint ``train.py`` writes holds the run's resolved config under :data:`CONFIG_KEY` (written by
:class:`RecordRunConfig`), so a resume compares against what the checkpoint was really trained with, not
against a ``config.yaml`` that a previous resume may have overwritten. :func:`check_resume_config` runs
before anything is built or written and refuses a change to what defines the experiment (the algorithm, the
model, the masking, the data and its order, the seed, the sampling), naming each field, old and new value,
and the override ``resume_allow_changes``. Everything else may change: learning rate and schedule,
``max_steps``, loggers, validation cadence and data, callbacks, logging, speed options.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# Where the resolved config lives in a checkpoint
CONFIG_KEY = "longact_config"
# The override: config fields (or their prefixes) a resume may change although they are frozen
OVERRIDE = "resume_allow_changes"

# Fields (and everything under them) that define the experiment: a resume may not change them
FROZEN = (
    "seed",
    "algo",
    "model",
    "masking",
    "correction",
    "data.train",
    "data.seed",
    "data.batch_size",
    "data.max_prompt_tokens",
    "data.system_prompt",
    "data.reward",
    "rollout.group_size",
    "rollout.temperature",
    "rollout.top_p",
    "rollout.top_k",
    "rollout.max_new_tokens",
    "module.learner.ppo_epochs",
    "module.learner.mini_batch_size",
    "trainer.devices",
    "trainer.num_nodes",
)
# Fields under FROZEN ones that may change (how, not what, is computed; or what is reported)
ALLOWED = (
    "model.gradient_checkpointing",
    "model.attn_implementation",
    "model.local_files_only",
    "masking.telemetry",
    "masking.rebuild_masks",
)


def _renamed(groups: tuple[str, ...], keys: tuple[str, ...], node: str, new_key: str | None = None) -> dict:
    """``{"<group>.<key>": "<node>.<new_key or key>"}``.

    Built from parts, not dotted literals, so that re-applying the config-path rename script to this file
    leaves the old names alone.
    """
    return {".".join((g, k)): ".".join((node, new_key or k)) for g in groups for k in keys}


# Config paths renamed since checkpoints started recording their config (old -> new): a checkpoint written
# before ``conf/module/default.yaml`` nested the module's settings compares under the new names
RENAMED = {
    **_renamed(("module",), ("lr", "weight_decay", "betas"), "module.optimizer"),
    **_renamed(("module",), ("warmup_steps",), "module.scheduler"),
    **_renamed(
        ("module",),
        (
            "ppo_epochs",
            "mini_batch_size",
            "micro_batch_size",
            "micro_batch_tokens",
            "max_prompt_tokens",
            "max_grad_norm",
        ),
        "module.learner",
    ),  # fmt: skip
    **_renamed(("train", "module"), ("shared_prefix", "pack_completions"), "module.logprobs"),
    **_renamed(("train", "module"), ("logprob_chunk",), "module.logprobs", "chunk_size"),
    **_renamed(("module",), ("val_lengths",), "module.validation", "lengths"),
    **_renamed(("module",), ("val_max_new_tokens",), "module.validation", "max_new_tokens"),
    **_renamed(
        ("module",),
        ("max_nonfinite_steps", "max_skipped_steps", "max_reward_failure_steps", "max_masked_out_steps"),
        "module.guards",
    ),  # fmt: skip
}


def _under(field: str, prefixes: Iterable[str]) -> bool:
    return any(field == p or field.startswith(p + ".") for p in prefixes)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": leaf}`` of nested dicts (lists are leaves)."""
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        field = f"{prefix}.{key}" if prefix else str(key)
        out.update(flatten(value, field) if isinstance(value, dict) and value else {field: value})
    return out


_ABSENT = "<absent>"


def frozen_changes(saved: dict, new: dict, allow: Iterable[str] = ()) -> list[tuple[str, Any, Any]]:
    """``(field, checkpoint's value, this run's value)`` of every frozen field that differs.

    Args:
        saved: The checkpoint's resolved config.
        new: This run's resolved config.
        allow: Fields (or prefixes) the user allows to change (``resume_allow_changes``).
    """
    old_flat = {RENAMED.get(k, k): v for k, v in flatten(saved).items()}  # an older checkpoint's names
    new_flat = flatten(new)
    allow = tuple(allow)
    if new_flat.get("masking.rebuild_masks") is True:  # new masks are built on purpose at the resumed step
        allow += ("masking",)
    changes = []
    for field in sorted(set(old_flat) | set(new_flat)):
        if not _under(field, FROZEN) or _under(field, ALLOWED) or _under(field, allow):
            continue
        old, now = old_flat.get(field, _ABSENT), new_flat.get(field, _ABSENT)
        if old != now:
            changes.append((field, old, now))
    return changes


def _group(field: str) -> str:
    """The override entry for a field: the group for a swapped component (``algo``), else the field."""
    return field.rsplit(".", 1)[0] if field.endswith("._target_") else field


def check_resume_config(saved: dict | None, new: dict, path: str | Path, allow: Iterable[str] = ()) -> None:
    """Refuse a resume that changes a frozen setting, before anything is built or written.

    Args:
        saved: The config recorded in the checkpoint (``None``: a checkpoint from before it was recorded;
            nothing can be compared and a warning says so).
        new: This run's resolved config.
        path: ``ckpt_path`` (for the message).
        allow: ``resume_allow_changes``.

    Raises:
        ValueError: Naming each changed field with both values, and the override.
    """
    if saved is None:
        log.warning(
            "ckpt_path=%s records no config (written before train.py recorded one): this run's settings "
            "cannot be compared with the checkpoint's; make sure algo, model, masking and data are the same",
            path,
        )
        return
    changes = frozen_changes(saved, new, allow)
    if not changes:
        return
    shown = "; ".join(f"{f}: {o!r} -> {n!r}" for f, o, n in changes[:12])
    more = f" (and {len(changes) - 12} more)" if len(changes) > 12 else ""
    fields = ",".join(dict.fromkeys(_group(f) for f, _, _ in changes))
    shape = any(_under(f, ("model",)) for f, _, _ in changes)
    raise ValueError(
        f"ckpt_path={path} was trained with other settings than this run, and a resumed run may not change "
        f"them (the results would be labelled with settings they were not trained with): {shown}{more}. "
        "Resume with the checkpoint's settings (set them back on the command line), or start a new run "
        f"with ckpt_path=null. If the change is intended, add {OVERRIDE}=[{fields}] (recorded in "
        "config.yaml)"
        + ("; a model of another shape still cannot load the checkpoint's weights." if shape else ".")
        + " What may change on resume: docs/reliability.md."
    )


def check_override(new: dict, allow: Iterable[str]) -> None:
    """Refuse a ``resume_allow_changes`` entry that names no field of the config (a typo allows nothing).

    Raises:
        ValueError: Naming the entry.
    """
    fields = flatten(new)
    for entry in allow:
        if not any(f == entry or f.startswith(f"{entry}.") for f in fields):
            raise ValueError(
                f"{OVERRIDE} lists {entry!r}, which names no field of this run's config: fix the spelling "
                f"(e.g. {OVERRIDE}=[algo] or [algo.kl_coef])"
            )


def check_resume_steps(global_step: int, max_steps: int, path: str | Path) -> None:
    """Refuse a checkpoint that has trained past ``trainer.max_steps`` (its weights are not that run's).

    Raises:
        ValueError: Naming both step counts and the fixes.
    """
    if 0 < max_steps < global_step:
        raise ValueError(
            f"ckpt_path={path} has trained {global_step} steps, more than trainer.max_steps={max_steps}: the "
            f"run would end at once and report weights of step {global_step} as a {max_steps}-step run. Set "
            f"trainer.max_steps >= {global_step}, or resume from an earlier checkpoint"
        )


def check_resume_settings(saved: dict | None, global_step: int, cfg: DictConfig) -> None:
    """Every settings check of a resume (one call from ``train.check_config``), before anything is built.

    Args:
        saved: The config recorded in the checkpoint (``None``: not recorded).
        global_step: The checkpoint's optimizer steps.
        cfg: This run's composed config (``ckpt_path``, ``resume_allow_changes``, ``trainer.max_steps``).

    Raises:
        ValueError: A misspelt override, a changed frozen setting, or ``trainer.max_steps`` below the step.
    """
    allow, new = list(cfg.get(OVERRIDE) or []), OmegaConf.to_container(cfg, resolve=True)
    check_override(new, allow)
    check_resume_config(saved, new, cfg.ckpt_path, allow)
    check_resume_steps(global_step, int(cfg.trainer.get("max_steps", -1)), cfg.ckpt_path)


class RecordRunConfig(L.Callback):
    """Writes the run's resolved config into every checkpoint (under :data:`CONFIG_KEY`).

    Args:
        config: The resolved config as plain containers (``OmegaConf.to_container(cfg, resolve=True)``).
    """

    def __init__(self, config: dict) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """Record the config (plain containers: loadable with ``weights_only=True``)."""
        checkpoint[CONFIG_KEY] = self.config
