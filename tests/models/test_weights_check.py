"""Issue 22: a truncated or random model.safetensors names the file and says corrupt (train and evaluate)."""

import pytest

from longact_pl.models.hf import load_hf
from longact_pl.models.tiny import tiny_llama


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    loaded = tiny_llama()
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("damage", ["truncated", "random", "header_only"])
def test_a_corrupt_weights_file_is_named(saved, tmp_path, damage):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(saved, folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(
        {"truncated": data[: len(data) // 2], "random": bytes(range(256)) * 64, "header_only": data[:1000]}[
            damage
        ]
    )
    with pytest.raises(ValueError, match=rf"{weights} is corrupt \(.*\).*again"):
        load_hf(str(folder))


def test_an_intact_folder_loads(saved):
    assert load_hf(str(saved)).model.config.hidden_size == 64
