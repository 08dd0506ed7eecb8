from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from longact_pl.masking import BottomK, RandomK, SaliencyMask, TopK

CONF = str(Path(__file__).resolve().parents[2] / "conf")


@pytest.fixture(scope="module")
def configs():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return {
            n: compose(overrides=[f"+masking={n}", "+seed=5"])
            for n in ("none", "saliency", "random", "inverse")
        }


def test_none_composes_to_an_empty_node(configs):
    assert len(configs["none"].masking) == 0 and "_target_" not in configs["none"].masking


@pytest.mark.parametrize("name,selector", [("saliency", TopK), ("random", RandomK), ("inverse", BottomK)])
def test_options_instantiate_the_callback_with_their_selector(configs, name, selector):
    cb = instantiate(configs[name].masking)
    assert isinstance(cb, SaliencyMask) and type(cb.selector) is selector
    assert cb.targets == ("q_proj", "k_proj") and cb.ratio == 0.3 and cb.seed == 5
    assert isinstance(cb.targets, tuple)
