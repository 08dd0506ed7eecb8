"""Option combinations of ``train.py`` refused before anything is built (reliability checks).

Kept apart from ``config_check.py`` (types) so each stays one concern; :func:`check_run_settings` is called
by ``train.check_config`` with the other checks, before the run directory, its config or a model is touched.
"""

from __future__ import annotations

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from longact_pl.single_device import SP_FIELD, single_device

_SINGLE = "longact_pl.single_device.single_device"


def check_strategy_fields(trainer: DictConfig) -> None:
    """A strategy field the chosen strategy lacks names the strategy to pick.

    ``strategy=single`` with ``trainer.strategy.sequence_parallel_size=2`` asks for ``strategy=fsdp``
    (instead of Lightning's ``invalid strategy name`` much later).

    Raises:
        ValueError: Naming the field and ``strategy=fsdp``.
    """
    node = trainer.get("strategy")
    if not isinstance(node, DictConfig):
        return
    fields = OmegaConf.to_container(node, resolve=True)
    target = fields.pop("_target_", None)
    if target is None and "sequence_parallel_size" in fields:  # `+trainer.strategy.<field>` on a string
        raise ValueError(
            f"{SP_FIELD} needs strategy=fsdp (a strategy with sequence-parallel groups); add strategy=fsdp "
            "and set the field without '+'"
        )
    if target == _SINGLE:
        get_object(target)  # the function itself (keeps the path in one place)
        single_device(**{k: v for k, v in fields.items() if k == "sequence_parallel_size"})


def check_run_settings(cfg: DictConfig) -> None:
    """Every reliability check of option combinations (one call from ``train.check_config``).

    Raises:
        ValueError: Naming the field and the fix.
    """
    check_strategy_fields(cfg.trainer)
