"""Any Hugging Face causal LM by local path or hub id (for users with real models)."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from longact_pl.models.rope import with_rope_scaling
from longact_pl.models.types import LoadedModel, finish, resolve_dtype
from longact_pl.models.weights_check import check_safetensors

# Files of which a Hugging Face tokenizer needs at least one
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


def looks_local(name_or_path: str) -> bool:
    """Whether ``name_or_path`` is meant as a local path rather than a hub id (``org/name`` or ``name``).

    True when it starts with ``.``, ``/`` or ``~``, has more than one ``/``, exists, or its parent folder
    exists (``runs/final`` when ``runs/`` exists).
    """
    path = Path(name_or_path).expanduser()
    parent_exists = str(path.parent) != "." and path.parent.exists()
    return (
        name_or_path.startswith((".", "/", "~"))
        or name_or_path.count("/") > 1
        or path.exists()
        or parent_exists
    )


def check_local_model(name_or_path: str) -> None:
    """Refuse a local path that is not a loadable model folder, before the hub could be asked for it.

    Raises:
        FileNotFoundError: If it looks local and does not exist, or is not a folder.
        ValueError: If the folder lacks ``config.json`` or tokenizer files.
    """
    if not looks_local(name_or_path):
        return
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        what = "is a file, not a model folder" if path.exists() else "does not exist"
        raise FileNotFoundError(
            f"model.name_or_path={name_or_path} {what}; it looks like a local path, so the hub is not asked. "
            "Point it at a folder written by save_pretrained (e.g. outputs/train/<run>/final) or give a hub "
            "id such as Qwen/Qwen3-4B"
        )
    if not (path / "config.json").is_file():
        raise ValueError(
            f"model.name_or_path={name_or_path} has no config.json: not a Hugging Face model folder"
        )
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ValueError(
            f"model.name_or_path={name_or_path} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)}):"
            " copy them from the base model (tokenizer.save_pretrained(folder))"
        )
    check_safetensors(path)  # a cut-short weights file names itself, not only "header too large"


def load_hf(
    name_or_path: str,
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    gradient_checkpointing: bool = False,
    trust_remote_code: bool = False,
    local_files_only: bool = False,
    revision: str | None = None,
    rope_scaling: dict | None = None,
) -> LoadedModel:
    """Load a causal LM and tokenizer with ``from_pretrained``.

    Args:
        name_or_path: A local folder or a hub id (``Qwen/Qwen3-8B``).
        dtype: Parameter dtype name (float32 to train: see ``longact_pl.precision``).
        attn_implementation: ``sdpa``, ``eager`` or ``flash_attention_2``.
        gradient_checkpointing: Recompute activations in backward.
        trust_remote_code: Run code shipped with the checkpoint (off by default; only for sources you trust).
        local_files_only: Never touch the network.
        revision: Hub revision to pin.
        rope_scaling: RoPE scaling (YaRN etc.; ``longact_pl.models.rope``), ``None`` = the model's own.

    Raises:
        ValueError: If ``name_or_path`` is unset, or a local folder without config or tokenizer files, or
            with a corrupt ``*.safetensors`` file.
        FileNotFoundError: If ``name_or_path`` looks like a local path that does not exist.
    """
    if not name_or_path or name_or_path == "???":
        raise ValueError(
            "model.name_or_path is required for model=hf; set model.name_or_path=/path/or/hub-id"
        )
    check_local_model(name_or_path)
    kwargs = {
        "trust_remote_code": trust_remote_code,
        "local_files_only": local_files_only,
        "revision": revision,
    }
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    config = with_rope_scaling(AutoConfig.from_pretrained(name_or_path, **kwargs), rope_scaling)
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path,
        config=config,
        dtype=resolve_dtype(dtype),
        attn_implementation=attn_implementation,
        **kwargs,
    )
    return finish(model, tokenizer, gradient_checkpointing)
