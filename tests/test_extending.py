"""docs/extending.md runs: each example's class, YAML file and command build and compute as the page says.

The page's Python blocks become one module (``my_longact_ext``), its YAML blocks files under a temporary
config dir added to Hydra's search path, and each command's overrides are composed as ``train.py`` does.
"""

from __future__ import annotations

import math
import re
import shlex
import sys

import pytest
import torch
from hydra.utils import instantiate

from longact_pl.algos.correction import RolloutCorrection
from longact_pl.masking import SaliencyMask
from longact_pl.masking.calibrate import collect_stats
from longact_pl.masking.units import count_k
from longact_pl.models.tiny import tiny_llama
from tests.helpers import CONF, compose_train

PAGE = CONF.parent / "docs" / "extending.md"
SECTIONS = (
    "A new policy loss",
    "A new advantage estimator",
    "A new rollout-correction mode",
    "A new LongAct mask unit",
)


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def _section(title: str) -> str:
    text = PAGE.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


@pytest.fixture
def example(tmp_path, monkeypatch):
    """``title -> config composed from the section's command`` with the page's classes importable."""
    module = "\n\n".join(code for title in SECTIONS for code in _blocks(_section(title), "python"))
    (tmp_path / "my_longact_ext.py").write_text(module)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_longact_ext", raising=False)
    conf = tmp_path / "conf"

    def compose(title: str):
        section = _section(title)
        (yaml,) = _blocks(section, "yaml")
        path = yaml.splitlines()[0].removeprefix("# conf/")  # the first line names the file
        (conf / path).parent.mkdir(parents=True, exist_ok=True)
        (conf / path).write_text(yaml)
        (command,) = _blocks(section, "text")
        args = shlex.split(command)
        assert args[:2] == ["python", "train.py"], command
        return compose_train(tmp_path / "run", *args[2:], f"hydra.searchpath=[file://{conf}]")

    return compose


def test_every_example_has_a_class_a_yaml_file_and_a_command():
    for title in SECTIONS:
        section = _section(title)
        assert len(_blocks(section, "python")) == 1 and len(_blocks(section, "text")) == 1, title
        (yaml,) = _blocks(section, "yaml")
        assert yaml.startswith("# conf/") and "_target_: my_longact_ext." in yaml, title
        body = [line for line in _blocks(section, "python")[0].splitlines() if line.strip()]
        assert len(body) <= 25, f"{title}: the example should stay short ({len(body)} lines)"


def test_the_new_policy_loss_equals_the_hand_computed_value(example):
    cfg = example("A new policy loss")
    algo = instantiate(cfg.algo)
    assert type(algo.policy_loss.surrogate).__name__ == "CISPO" and algo.kl_coef == 0.0
    # two rows, two tokens each (the second row's last token padded); advantages +1 and -1
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -9.0]], requires_grad=True)  # [N, T]
    old = torch.tensor([[-1.0, -2.5], [-0.1, 0.0]])  # ratios e^0 = 1, e^0.5 = 1.65 (clipped to 1.2), e^-0.4
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, metrics = algo.loss(logp, old, None, torch.tensor([1.0, -1.0]), mask)
    # seq_mean_token_mean: row 0 = (-(1)(1)(-1) + -(1.2)(1)(-2)) / 2 = (1 + 2.4) / 2; row 1 = -(0.8)(-1)(-0.5)
    low = max(math.exp(-0.4), 0.8)
    expected = ((1.0 + 2.4) / 2 + (-low * 0.5)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["clip_frac_high"].item() == pytest.approx(1 / 3)  # token 2 of row 0, of 3 tokens
    loss.backward()
    assert logp.grad[0, 1].item() == pytest.approx(-1.2 / 4)  # clipped, yet the gradient flows (CISPO)


def test_the_new_advantage_estimator_is_leave_one_out(example):
    algo = instantiate(example("A new advantage estimator").algo)
    adv = algo.advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0]), 4)
    # group 1: 1 - 0 = 1, 0 - 1/3 = -1/3; group 2: equal rewards -> 0
    torch.testing.assert_close(adv, torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0, 0.0]))


def test_the_new_correction_mode_clamps_both_sides(example):
    cfg = example("A new rollout-correction mode")
    assert cfg.rollout._target_.endswith("VLLMRollout")
    corr = instantiate(cfg.correction)
    assert isinstance(corr, RolloutCorrection) and type(corr.mode).__name__ == "ClampBoth"
    sampler = torch.zeros(1, 4)  # [N, T]
    train = torch.tensor([[math.log(4.0), math.log(0.25), math.log(1.5), 0.0]])  # ratios 4, 1/4, 1.5, pad
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    torch.testing.assert_close(corr.weights(train, sampler, mask), torch.tensor([[2.0, 0.5, 1.5, 1.0]]))
    assert corr.metrics(train, sampler, mask)["token_truncated_frac"].item() == pytest.approx(2 / 3)


def test_the_new_mask_unit_keeps_whole_blocks_on_a_tiny_model(example):
    cfg = example("A new LongAct mask unit")
    callback = instantiate(cfg.masking)
    assert isinstance(callback, SaliencyMask) and callback.options.unit == "block"
    model = tiny_llama(seed=0).model
    builder = callback.check_model(model)
    prompts = [
        torch.randint(3, 100, (24,), generator=torch.Generator().manual_seed(i)).tolist() for i in range(2)
    ]
    stats = collect_stats(model, builder.targets, prompts, units=builder.stats_units())
    masks = builder.build(builder.scores(stats))
    for target in builder.targets:
        blocks = masks[target.name].view(-1, 4)  # [rows / 4, 4]
        assert (blocks.all(-1) | ~blocks.any(-1)).all(), target.name  # each block kept or dropped whole
        kept = int(blocks.all(-1).sum())
        assert kept == count_k(cfg.masking.ratio, target.rows // 4), target.name
