"""Qwen3's q_norm / k_norm: trained densely (default) or frozen with the masked rows they rescale."""

import pytest
import torch

from longact_pl.masking import SaliencyMask
from tests.masking import models
from tests.masking.stub import StubData, StubModule, fit


def _norm_weights(policy):
    return {
        n: p.detach().clone()
        for n, p in policy.named_parameters()
        if n.endswith(("q_norm.weight", "k_norm.weight"))
    }


@pytest.mark.parametrize("norms", ["dense", "frozen"])
def test_qwen3_norms_dense_move_frozen_stay_bit_identical(norms):
    policy = models.qwen3()
    start = _norm_weights(policy)
    assert len(start) == 4
    cb = SaliencyMask(norms=norms, calib_samples=1)
    module = StubModule(policy)
    fit(module, StubData(models.VOCAB), [cb], max_steps=2)
    end = _norm_weights(policy)
    for name in start:
        assert torch.equal(start[name], end[name]) == (norms == "frozen"), name
    # the masks are exact either way, and the rest of the model trains
    w = "model.layers.0.self_attn.q_proj.weight"
    mask = cb.masks["model.layers.0.self_attn.q_proj"]
    assert torch.equal(module.steps[0]["before"][w][~mask], module.steps[-1]["after"][w][~mask])
    assert not torch.equal(
        module.steps[0]["before"]["model.layers.0.mlp.up_proj.weight"],
        policy.model.layers[0].mlp.up_proj.weight,
    )


def test_norms_frozen_on_a_model_without_q_norm_names_the_field():
    with pytest.raises(
        ValueError, match=r"masking.norms=frozen: LlamaForCausalLM has no .*q_norm.*masking.norms=dense"
    ):
        SaliencyMask(norms="frozen").check_model(models.llama())
    with pytest.raises(ValueError, match="masking.norms"):
        SaliencyMask(norms="half")
