"""Resuming cannot mix maskings: a changed option is an error unless the masks are rebuilt on purpose."""

import json

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from longact_pl.masking import Head, RandomK, SaliencyMask
from tests.masking import models
from tests.masking.stub import StubData, StubModule, fit


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 2-step saliency run (ratio 0.3) with last.ckpt."""
    folder = tmp_path_factory.mktemp("ckpt")
    ckpt = ModelCheckpoint(dirpath=folder, save_last=True, every_n_train_steps=1, save_top_k=0)
    cb = SaliencyMask(ratio=0.3, calib_samples=1)
    fit(StubModule(models.llama()), StubData(models.VOCAB), [cb, ckpt], max_steps=2)
    return folder / "last.ckpt", cb.masks


@pytest.mark.parametrize(
    ("kwargs", "changed"),
    [
        ({"selector": RandomK()}, "selector: 'TopK' -> 'RandomK'"),
        ({"ratio": 0.5, "unit": Head()}, "ratio: 0.3 -> 0.5, unit: 'channel' -> 'head'"),
        ({"targets": ["q_proj"]}, "targets: ['q_proj', 'k_proj'] -> ['q_proj']"),
    ],
)
def test_resume_with_other_masking_options_is_an_error_naming_them(checkpoint, kwargs, changed):
    data = StubData(models.VOCAB)
    with pytest.raises(ValueError, match="rebuild_masks=true") as err:
        fit(
            StubModule(models.llama()),
            data,
            [SaliencyMask(calib_samples=1, **kwargs)],
            3,
            ckpt_path=str(checkpoint[0]),
        )
    assert changed in str(err.value)
    assert data.calls == 0  # failed before calibrating or training


def test_rebuild_masks_builds_new_masks_and_the_summary_says_so(checkpoint, tmp_path):
    data = StubData(models.VOCAB)
    cb = SaliencyMask(ratio=0.5, calib_samples=1, rebuild_masks=True)
    module = StubModule(models.llama(), export_dir=tmp_path / "final")
    trainer = fit(module, data, [cb], max_steps=3, ckpt_path=str(checkpoint[0]))
    assert trainer.global_step == 3 and data.calls == 1  # calibrated again at the resumed step
    name = "model.layers.0.self_attn.q_proj"
    assert int(checkpoint[1][name].sum()) == 19 and int(cb.masks[name].sum()) == 32
    assert torch.equal(module.steps[-1]["masks"][name], cb.masks[name])  # step 3 trained the new mask
    summary = json.loads((tmp_path / "final" / "mask_summary.json").read_text())
    assert summary["ratio"] == 0.5 and summary["modules"][name]["kept"] == 32
    assert summary["rebuilt"]["step"] == 2 and summary["rebuilt"]["previous"]["ratio"] == 0.3
    assert [h["step"] for h in summary["history"]] == [2]
