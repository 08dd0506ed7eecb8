"""Print the memory plan of a ``train.py`` config before running it (same as ``python -m longact_pl.memory``).

    python scripts/plan_memory.py model=tiny_qwen3
    python scripts/plan_memory.py experiment=paper_qwen3_4b_grpo model.name_or_path=Qwen/Qwen3-4B \
        trainer.devices=8 memory.limit_gb=80
"""

import sys

from longact_pl.memory.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
