import pytest
from transformers import AutoTokenizer

from longact_pl.models.smollm2 import smollm2_folder


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(smollm2_folder())
