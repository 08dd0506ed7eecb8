"""Print the memory plan of a ``train.py`` config: ``python -m longact_pl.memory <hydra overrides>``.

    python -m longact_pl.memory experiment=paper_qwen3_4b_grpo model.name_or_path=Qwen/Qwen3-4B \
        trainer.devices=8 memory.limit_gb=80

Loads nothing (the model's shape comes from its config); exits 1 when the plan does not fit the limit
(``memory.limit_gb``, else this machine's device). Also ``scripts/plan_memory.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from longact_pl.memory.preflight import MemoryPlanError, memory_preflight
from longact_pl.precision_choice import choose_precision

CONF = Path(__file__).resolve().parents[3] / "conf"


def main(argv: list[str] | None = None) -> int:
    """Compose ``conf/train.yaml`` with ``argv`` overrides, print the plan; 0 when it fits, 1 when not."""
    overrides = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in overrides):
        print(__doc__)
        return 0
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    choose_precision(cfg, announce=False)
    try:
        plan = memory_preflight(cfg, announce=True)
    except MemoryPlanError as err:
        print(f"does not fit: {err}")
        return 1
    return 0 if plan is not None or cfg.memory.check == "off" else 1


if __name__ == "__main__":
    sys.exit(main())
