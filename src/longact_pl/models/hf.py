"""Any Hugging Face causal LM by local path or hub id (for users with real models)."""

from __future__ import annotations

from transformers import AutoModelForCausalLM, AutoTokenizer

from longact_pl.models.types import LoadedModel, finish, resolve_dtype


def load_hf(
    name_or_path: str,
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    gradient_checkpointing: bool = False,
    trust_remote_code: bool = False,
    local_files_only: bool = False,
    revision: str | None = None,
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
    """
    if not name_or_path or name_or_path == "???":
        raise ValueError(
            "model.name_or_path is required for model=hf; set model.name_or_path=/path/or/hub-id"
        )
    kwargs = {
        "trust_remote_code": trust_remote_code,
        "local_files_only": local_files_only,
        "revision": revision,
    }
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path, dtype=resolve_dtype(dtype), attn_implementation=attn_implementation, **kwargs
    )
    return finish(model, tokenizer, gradient_checkpointing)
