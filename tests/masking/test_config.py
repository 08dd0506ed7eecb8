from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from longact_pl.masking import BottomK, RandomK, SaliencyMask, TopK
from longact_pl.train import run
from tests.helpers import compose_train

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
    opts = cb.options
    assert opts.targets == ("q_proj", "k_proj") and opts.ratio == 0.3 and opts.seed == 5
    assert isinstance(opts.targets, tuple)


def test_new_options_reach_the_callback(configs):
    cb = instantiate(configs["saliency"].masking)
    opts = cb.options
    assert (opts.pairing, opts.norms, opts.measure_at, cb.rebuild_masks, cb.telemetry) == (
        "independent", "dense", "proj", False, True,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["masking/unit=rope_pair", "model._target_=tests.masking.models.tiny_opt"],
            r"masking.unit=rope_pair",
        ),
        (["masking.pairing=joint", "masking.targets=[q_proj]"], r"masking.pairing=joint"),
        (["masking.norms=frozen"], r"masking.norms=frozen: LlamaForCausalLM has no"),
        (["masking.measure_at=post_rope", "masking.targets=[gate_proj]"], r"masking.measure_at=post_rope"),
        (["masking.measure_at=post_rope"], r"masking.unit=channel .* use masking/unit=rope_pair"),
        # the unit is a config group now: the old field path names the new one
        (["masking.unit=rope_pair"], r"masking/unit=rope_pair"),
    ],
)
def test_bad_combinations_fail_before_anything_is_written(tmp_path, overrides, message):
    cfg = compose_train(tmp_path / "run", "masking=saliency", *overrides)
    with pytest.raises(Exception, match=message):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
