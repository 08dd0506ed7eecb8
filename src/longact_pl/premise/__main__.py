"""``python -m longact_pl.premise <hydra overrides>`` (config: ``conf/premise.yaml``)."""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from longact_pl.premise.run import run

CONF = str(Path(__file__).resolve().parents[3] / "conf")


@hydra.main(version_base="1.3", config_path=CONF, config_name="premise")
def main(cfg: DictConfig) -> None:
    """Measure, write the report, print the decision line."""
    summary = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    print(summary["decision"])


if __name__ == "__main__":
    main()
