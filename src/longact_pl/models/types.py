"""The value every model loader returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class LoadedModel:
    """A causal LM and its tokenizer, ready for training.

    Attributes:
        model: The Hugging Face causal LM (the policy).
        tokenizer: Its tokenizer; ``pad_token`` is always set and padding is on the left.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


def resolve_dtype(name: str, field: str = "model.dtype") -> torch.dtype:
    """Turn a dtype name from the config into a ``torch.dtype``.

    Args:
        name: One of ``float32``, ``bfloat16``, ``float16``.
        field: The config key, named in the error.

    Raises:
        ValueError: If the name is not an allowed dtype.
    """
    if name not in _DTYPES:
        raise ValueError(f"{field}={name!r} is not supported; use one of {list(_DTYPES)}")
    return getattr(torch, name)


def finish(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, gradient_checkpointing: bool
) -> LoadedModel:
    """Apply the settings every loader shares and wrap the pair.

    Args:
        model: The loaded model.
        tokenizer: Its tokenizer.
        gradient_checkpointing: Recompute activations in backward to save memory.
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = True
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model=model, tokenizer=tokenizer)
