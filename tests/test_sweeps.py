"""Every W&B sweep spec only references config groups, options and keys that exist.

Each parameter value is composed the way the agent passes it (``key=value`` from ``${args_no_hyphens}``, after
the command's fixed arguments and the spec's constants), one value at a time; grid sweeps are also composed
combination by combination, since W&B has no conditional parameters.
"""

import itertools

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.helpers import CONF, ROOT

SPECS = sorted((CONF / "sweep").glob("*.yaml"))
MACROS = {"${env}", "${interpreter}", "${program}", "${args_no_hyphens}"}


def _load(path):
    return yaml.safe_load(path.read_text())


def _values(param: dict) -> list:
    """The values a parameter can take (both ends of a distribution)."""
    if "values" in param:
        return list(param["values"])
    if "value" in param:
        return [param["value"]]
    return [param["min"], param["max"]]


def _arg(key, value) -> str:
    return f"{key}={value}"  # what the agent emits: wandb's create_sweep_command_args


@pytest.fixture(scope="module", autouse=True)
def hydra_conf():
    """One Hydra initialisation for the module's many compositions."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


def _compose(overrides):
    return compose(
        "train", overrides=["paths.output_dir=/tmp/sweep_check", *overrides], return_hydra_config=True
    )


def _check(cfg, key, value):
    """The override took effect: a group got the option, a key got the value."""
    if (CONF / key).is_dir():
        assert (CONF / key / f"{value}.yaml").is_file(), f"{key}={value}: no conf/{key}/{value}.yaml"
        assert cfg.hydra.runtime.choices[key] == str(value)
    else:
        got = OmegaConf.select(cfg, key, default="<absent>")
        assert got != "<absent>", f"{key}: no such config key"
        assert got == value or str(got) == str(value), (key, got, value)


def test_there_are_sweeps():
    assert {"longact_ratio.yaml"} <= {p.name for p in SPECS}


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_sweep_spec_shape(path):
    spec = _load(path)
    assert (ROOT / spec["program"]).is_file() and spec["program"] == "train.py"
    assert spec["method"] in {"grid", "random", "bayes"}
    assert spec["metric"] == {"name": "val/acc", "goal": "maximize"}
    command = spec["command"]
    assert set(command) >= MACROS and command[:3] == ["${env}", "${interpreter}", "${program}"]
    assert "logger=wandb" in command
    assert spec["parameters"], "a sweep with nothing to sweep"
    if spec["method"] == "grid":
        assert all("values" in p or "value" in p for p in spec["parameters"].values()), "grid needs values"


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_parameter_value_composes(path):
    spec = _load(path)
    fixed = [c for c in spec["command"] if c not in MACROS]
    params = spec["parameters"]
    constants = [_arg(k, p["value"]) for k, p in params.items() if "value" in p]
    for key, param in params.items():
        for value in _values(param):
            cfg = _compose([*fixed, *constants, _arg(key, value)])
            _check(cfg, key, value)
            assert "wandb" in cfg.logger and cfg.logger.wandb.default_mode == "online"


@pytest.mark.parametrize("path", [p for p in SPECS if _load(p)["method"] == "grid"], ids=lambda p: p.stem)
def test_every_grid_combination_composes(path):
    spec = _load(path)
    fixed = [c for c in spec["command"] if c not in MACROS]
    keys = list(spec["parameters"])
    combos = list(itertools.product(*(_values(spec["parameters"][k]) for k in keys)))
    assert len(combos) <= 64, "keep grids small enough to run"
    for combo in combos:
        cfg = _compose([*fixed, *(_arg(k, v) for k, v in zip(keys, combo))])
        for key, value in zip(keys, combo):
            _check(cfg, key, value)


def test_agent_formats_args_like_the_check():
    sweep_utils = pytest.importorskip("wandb.sdk.launch.sweeps.utils")
    args = sweep_utils.create_sweep_command_args(
        {"args": {"masking": {"value": "random"}, "module.optimizer.lr": {"value": 1e-6}}}
    )
    assert args["args_no_hyphens"] == [_arg("masking", "random"), _arg("module.optimizer.lr", 1e-6)]


def test_a_bad_key_or_option_is_caught():
    with pytest.raises(Exception, match="masking.ratoi|ratoi"):
        _compose(["experiment=cpu_longact", "masking.ratoi=0.1"])
    with pytest.raises(Exception, match="saliancy"):
        _compose(["masking=saliancy"])
    # a ratio over the dense baseline is not a key: such a grid would fail (hence no `none` in longact_ratio)
    with pytest.raises(Exception, match="ratio"):
        _compose(["masking=none", "masking.ratio=0.1"])
