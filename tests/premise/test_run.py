"""The premise tool end to end on a tiny random Llama: known answers, first-order check, exact restore."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from longact_pl.premise.arms import build_arms
from longact_pl.premise.grads import RowSpace, freeze_all_but, nll, nll_and_grad
from longact_pl.premise.items import paired_item
from longact_pl.premise.measures import Direction, masked_step
from longact_pl.premise.options import PremiseOptions
from longact_pl.premise.report import read_records, write_report
from longact_pl.premise.run import _m3, run
from tests.helpers import CONF

TINY = [
    "model=tiny_llama",
    "premise.lengths=[256,512]",
    "premise.items=5",
    "premise.build_items=2",
    "premise.m3_items=1",
    "premise.random_masks=3",
    "premise.m3_lrs=[0.0,1e-3]",
    "premise.n_boot=200",
    "premise.threads=1",
    "masking.calib_samples=2",
]


def _compose(*overrides: str, base: list[str] = TINY):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("premise", overrides=[*base, *overrides])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("premise")
    summary = run(_compose(), out)
    return out, summary


def test_run_writes_records_report_and_known_answers(tiny_run):
    out, summary = tiny_run
    records = read_records(out)
    assert [r["role"] for r in records] == ["build", "build", "heldout", "heldout", "heldout"]
    for r in records:
        for key in ("short", "long", "diff"):
            m1 = r["m1"][key]
            assert m1["all"] == pytest.approx(1.0, abs=1e-9)  # a mask holding every row
            assert m1["mask"] + m1["complement"] == pytest.approx(1.0, abs=1e-6)  # the inverse mask
            assert 0.0 < m1["mask"] < 1.0
        assert r["tokens"]["long"] > r["tokens"]["short"]
    assert ["m2" in r for r in records] == [False, False, True, True, True]
    assert ["m3" in r for r in records] == [False, False, True, False, False]
    m3 = records[2]["m3"]["delta_nll"]
    for arm in ("mask", "random_0", "inverse"):
        assert m3[arm]["0.0"] == {"short": 0.0, "long": 0.0}  # a zero step changes nothing
        assert m3[arm]["0.001"]["long"] != 0.0
    meta = json.loads((out / "meta.json").read_text())
    kept = meta["arms"]["kept_rows"]
    assert kept["mask"] == kept["random_0"] == kept["inverse"] < kept["all"] == meta["arms"]["rows"]
    assert meta["arms"]["calib_prompt_tokens"] and min(meta["arms"]["calib_prompt_tokens"]) > 400
    text = (out / "report.md").read_text()
    assert summary["decision"] in text and "PARTIAL" not in text
    assert {"m1.png", "m2.png", "m3.png"} <= {p.name for p in out.iterdir()}
    rows = (out / "items.csv").read_text().splitlines()  # the raw per-item numbers, flat
    assert len(rows) == 6 and "m1_diff_mask" in rows[0] and "m3_mask_lr0.001_long" in rows[0]


def test_report_of_a_partial_run(tiny_run, tmp_path):
    out, _ = tiny_run
    (tmp_path / "meta.json").write_text((out / "meta.json").read_text())
    lines = (out / "items.jsonl").read_text().splitlines()
    (tmp_path / "items.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:40])  # torn last line
    summary = write_report(tmp_path)
    assert summary["items_done"] == 3 and summary["heldout_done"] == 1
    assert "PARTIAL RUN" in (tmp_path / "report.md").read_text()


@pytest.fixture(scope="module")
def tiny_parts():
    cfg = _compose()
    loaded = instantiate(cfg.model)
    model, tok = loaded.model, loaded.tokenizer
    model.eval()
    builder = instantiate(cfg.masking).check_model(model)
    space = RowSpace(builder.targets)
    freeze_all_but(model, space.params())
    task = instantiate(cfg.data.train.task)
    return model, tok, builder, space, task


def test_first_order_gain_matches_the_real_step(tiny_parts):
    """M2's gain <g, d> equals the finite-difference NLL decrease of the update it describes."""
    model, tok, builder, space, task = tiny_parts
    a = paired_item(task, tok, 7, [256]).lengths[256]
    b = paired_item(task, tok, 8, [256]).lengths[256]
    _, G = nll_and_grad(model, space, a.ids, a.n_answer)  # [R, in]
    _, g = nll_and_grad(model, space, b.ids, b.n_answer)
    prompts = [a.ids[: a.prompt_tokens]]
    arms, _ = build_arms(model, builder, prompts, random_masks=1, seed=0)
    gains = Direction(G).gains(g, arms)
    before = space.weights()
    eps = 0.05  # central difference: float32 NLL resolution ~1e-6 against changes of ~1e-4
    for norm in ("unit", "sign"):
        for arm in ("mask", "random_0", "all"):
            d = masked_step(G, arms[arm], norm, 1.0)
            d = d / d.norm()  # the unit-norm descent direction the gain describes  # [R, in]
            space.add_(eps * d)
            down = nll(model, b.ids, b.n_answer)
            space.set_(before)
            space.add_(-eps * d)
            up = nll(model, b.ids, b.n_answer)
            space.set_(before)
            fd = (up - down) / (2 * eps)
            assert fd == pytest.approx(gains[norm][arm], rel=0.03)
    assert torch.equal(space.weights(), before)


def test_m3_restores_the_weights_exactly(tiny_parts):
    model, tok, builder, space, task = tiny_parts
    item = paired_item(task, tok, 3, [256, 512])
    opts = PremiseOptions.from_mapping({**dict(_compose().premise), "lengths": [256, 512], "m3_lrs": [1e-2]})
    arms, _ = build_arms(model, builder, [item.lengths[512].ids], random_masks=1, seed=0)
    _, G = nll_and_grad(model, space, item.lengths[512].ids, item.lengths[512].n_answer)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = _m3(model, space, item, opts, Direction(G), arms, bf16=False)
    assert out["delta_nll"]["mask"]["0.01"]["long"] != 0.0
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_rowspace_maps_rows_to_weights(tiny_parts):
    _, _, _, space, _ = tiny_parts
    before = space.weights()
    delta = torch.zeros_like(before)
    delta[space.sizes[0]] = 1.0  # first row of the second target
    space.add_(delta)
    second = space.targets[1].linear.weight
    assert torch.allclose(second[0], before[space.sizes[0]] + 1)
    space.set_(before)
    assert torch.equal(space.weights(), before)


def test_paired_item_same_answer_at_both_lengths(tiny_parts):
    _, tok, _, _, task = tiny_parts
    item = paired_item(task, tok, 11, [256, 1024])
    short, long = item.lengths[256], item.lengths[1024]
    assert long.prompt_tokens > 3 * short.prompt_tokens
    for r in (short, long):
        assert tok.decode(r.ids[-r.n_answer :]).strip() == item.answer


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("lengths", [512, 256], "two increasing lengths"),
        ("build_items", 5, "build_items"),
        ("m3_items", 9, "m3_items"),
        ("precision", "fp16", "precision"),
        ("calib_seed", 100002, "overlap"),
    ],
)
def test_options_refuse_bad_values(field, value, match):
    raw = {**dict(_compose().premise), field: value}
    with pytest.raises(ValueError, match=match):
        PremiseOptions.from_mapping(raw)


def test_masking_none_is_refused(tmp_path):
    with pytest.raises(ValueError, match="masking=saliency"):
        run(_compose("masking=none", base=TINY[:-1]), tmp_path)
