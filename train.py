"""Entry point: ``python train.py algo=grpo masking=saliency`` (see ``conf/train.yaml``)."""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from longact_pl.train import run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train; returns the final held-out accuracy (for Hydra sweepers)."""
    metrics = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    return metrics.get("val/acc")


if __name__ == "__main__":
    main()
