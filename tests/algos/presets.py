"""The ``conf/algo`` presets as :class:`GroupPolicyGradient` objects, composed by Hydra like ``train.py``."""

from __future__ import annotations

import functools
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

from longact_pl.algos import GroupPolicyGradient
from tests.helpers import compose_train

PRESETS = ("grpo", "dr_grpo", "dapo", "gspo")


@functools.cache
def preset_settings(name: str, max_new_tokens: int = 40) -> dict:
    """The resolved ``algo`` settings of preset ``name`` (``rollout.max_new_tokens`` interpolated)."""
    cfg = compose_train(Path("/nonexistent"), f"algo={name}", f"rollout.max_new_tokens={max_new_tokens}")
    settings = OmegaConf.to_container(cfg.algo, resolve=True)
    settings.pop("_target_")
    return settings


def preset(name: str, **overrides) -> GroupPolicyGradient:
    """Preset ``name`` built as ``train.py`` builds it, with ``overrides`` applied (e.g. ``kl_coef=0.0``)."""
    settings = {**preset_settings(name), **overrides}
    # the surrogate and advantage nodes are built by Hydra as train.py does; the constructor is called here
    # so that its ValueError reaches the test unwrapped
    nodes = {k: instantiate(v) for k, v in settings.items() if isinstance(v, dict) and "_target_" in v}
    return GroupPolicyGradient(**{**settings, **nodes})
