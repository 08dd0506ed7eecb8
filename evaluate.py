"""Entry point: ``python evaluate.py eval=ruler model=tiny_llama eval.n=2`` (see ``conf/eval.yaml``)."""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from longact_pl.eval.runner import run


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    """Evaluate; returns the overall score (for Hydra sweepers)."""
    return run(cfg, Path(HydraConfig.get().runtime.output_dir)).get("overall")


if __name__ == "__main__":
    main()
