"""``strategy=single``: Lightning's automatic single-device strategy, with the fields the others have.

``trainer.strategy`` is a node with ``_target_`` in every strategy group, so a field that only another
strategy supports (``trainer.strategy.sequence_parallel_size=2``) reaches a check that names the strategy to
pick, instead of Hydra's ``not in struct`` and, following its ``+`` hint, Lightning's ``invalid strategy
name``.
"""

from __future__ import annotations

SP_FIELD = "trainer.strategy.sequence_parallel_size"


def single_device(sequence_parallel_size: int = 1) -> str:
    """Lightning's ``"auto"`` strategy (one device, picked from ``trainer.accelerator``).

    Args:
        sequence_parallel_size: Must be 1: sequence parallelism splits sequences over several ranks.

    Raises:
        ValueError: For ``sequence_parallel_size`` other than 1, naming ``strategy=fsdp``.
    """
    if sequence_parallel_size != 1:
        raise ValueError(
            f"{SP_FIELD}={sequence_parallel_size} needs strategy=fsdp (sequence parallelism splits each "
            "sequence over several ranks; strategy=single runs one process): add strategy=fsdp and "
            f"trainer.devices=<a multiple of {sequence_parallel_size}>, or set {SP_FIELD}=1"
        )
    return "auto"
