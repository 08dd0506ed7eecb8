"""On a CUDA device: LongAct single-device and under FSDP2 (one process); frozen rows exact on the GPU."""

import pytest
import torch

from longact_pl.masking.export import read_masks
from longact_pl.models.hf import load_hf
from longact_pl.models.tiny import tiny_llama
from longact_pl.train import run
from tests.helpers import compose_train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


@pytest.mark.parametrize("strategy", ["single", "fsdp"])
def test_longact_grpo_on_gpu(tmp_path, strategy):
    cfg = compose_train(
        tmp_path, f"strategy={strategy}", "trainer.accelerator=gpu", "trainer.devices=1",
        "trainer.precision=bf16-mixed", "masking=saliency", "masking.calib_samples=2",
        "data.reward._target_=tests.helpers.ParityReward",
    )  # fmt: skip
    run(cfg, tmp_path)
    masks = read_masks(tmp_path / "final")
    start, final = tiny_llama(seed=cfg.seed).model, load_hf(str(tmp_path / "final"), dtype="float32").model
    for name, keep in masks.items():
        before, after = start.get_submodule(name).weight, final.get_submodule(name).weight
        assert torch.equal(after[~keep], before[~keep]) and not torch.equal(after[keep], before[keep])
