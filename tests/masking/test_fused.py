"""Fused Q/K/V projections: only the query and key rows are scored and masked (Phi-3 and GPT-NeoX layouts)."""

import pytest
import torch

from longact_pl.masking import Channel, RopePair, SaliencyMask
from longact_pl.masking.targets import find_targets
from tests.masking import models
from tests.masking.stub import StubData, StubModule, fit

CASES = {
    # model, target, (q rows, k rows, v rows) of layer 0 worked out from each layout
    "phi3": (models.phi3, "qkv_proj", (range(0, 64), range(64, 96), range(96, 128))),
    "neox": (
        models.neox,
        "query_key_value",
        tuple([h * 48 + part * 16 + d for h in range(4) for d in range(16)] for part in range(3)),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fused_parts_are_the_query_and_key_rows(name):
    build, suffix, (q_rows, k_rows, _) = CASES[name]
    targets = find_targets(build(), (suffix,))
    assert [t.role for t in targets] == ["q", "k"] * 2
    assert targets[0].name.endswith(f"{suffix}[q]") and targets[0].group == f"{suffix}[q]"
    assert targets[0].part_rows.tolist() == list(q_rows) and targets[1].part_rows.tolist() == list(k_rows)


@pytest.mark.parametrize("others", ["dense", "frozen"])
@pytest.mark.parametrize("name", list(CASES))
def test_training_masks_only_query_and_key_rows_of_a_fused_projection(name, others):
    build, suffix, (q_rows, k_rows, v_rows) = CASES[name]
    policy = build()
    unit = RopePair() if name == "phi3" else Channel()  # NeoX's partial rotary makes pairs and singles
    cb = SaliencyMask(targets=[suffix], ratio=0.25, unit=unit, calib_samples=1, others=others)
    module = StubModule(policy, weight_decay=0.0)
    fit(module, StubData(models.VOCAB), [cb], max_steps=2)
    layer = "model.layers.0.self_attn" if name == "phi3" else "gpt_neox.layers.0.attention"
    weight = f"{layer}.{suffix}.weight"
    mask = cb.masks[f"{layer}.{suffix}"]  # [out_features]: the whole fused module
    q, k, v = (torch.tensor(list(r)) for r in (q_rows, k_rows, v_rows))
    assert int(mask[q].sum()) == 16 and int(mask[k].sum()) == (8 if name == "phi3" else 16)  # 25% of each
    assert bool(mask[v].all()) == (others == "dense")
    before, after = module.steps[0]["before"][weight], module.steps[-1]["after"][weight]
    assert torch.equal(before[~mask], after[~mask])  # frozen Q/K rows (and V rows with others=frozen)
    assert (before[mask] != after[mask]).any(1).all()  # kept Q/K rows and, with others=dense, every V row
    part = cb.summary()["modules"][f"{layer}.{suffix}[q]"]
    assert (part["rows"], part["kept"]) == (64, 16)


def test_fused_projection_of_unknown_layout_is_refused():
    with pytest.raises(
        ValueError, match=r"query_key_value \(falcon\) is a fused Q/K/V projection whose row layout"
    ):
        find_targets(models.falcon(), ("query_key_value",))
    with pytest.raises(ValueError, match=r"masking.measure_at=norm needs a norm module"):
        find_targets(models.phi3(), ("qkv_proj",), "norm")
