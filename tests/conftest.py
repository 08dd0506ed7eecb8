"""Shared fixtures: tiny random models built in code (2 layers, hidden 64, GQA)."""

from __future__ import annotations

import pytest
import torch

from longact_pl.models.tiny import tiny_llama, tiny_qwen3

torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture
def tiny():
    """A fresh tiny Llama and its tokenizer."""
    return tiny_llama(seed=0)


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the tiny model is loaded."""
    import longact_pl.models.tiny as tiny

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the config was checked")

    monkeypatch.setattr(tiny, "tiny_llama", refuse)


@pytest.fixture(params=["llama", "qwen3"])
def tiny_any(request):
    """A fresh tiny Llama or Qwen3."""
    return (tiny_llama if request.param == "llama" else tiny_qwen3)(seed=0)


def chat_ids(tokenizer, text: str) -> list[int]:
    """Token ids of a one-turn chat prompt."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer.encode(prompt, add_special_tokens=False)


def two_prompts(tokenizer) -> list[list[int]]:
    """Two chat prompts of different lengths (left padding in a batch)."""
    return [
        chat_ids(tokenizer, "Tell me a number."),
        chat_ids(tokenizer, "A much longer question about the colour of the sky?"),
    ]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: a second OpenMP thread only adds barrier waits (~15 ms per op on a busy 2-core box).

    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
