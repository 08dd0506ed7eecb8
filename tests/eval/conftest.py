import pytest
from transformers import AutoTokenizer

from longact_pl.models.smollm2 import smollm2_folder


@pytest.fixture(scope="session")
def tokenizer():
    """The SmolLM2 tokenizer (the tiny test models share it)."""
    tok = AutoTokenizer.from_pretrained(smollm2_folder())
    tok.padding_side = "left"
    return tok
