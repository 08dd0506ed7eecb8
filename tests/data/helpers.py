def n_tokens(tokenizer, text: str) -> int:
    """Token count of text without special tokens or chat template."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])
