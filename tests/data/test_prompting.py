import pytest

from longact_pl.data.prompting import encode_prompt


def templated(tokenizer, messages):
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_short_prompt_is_untouched(tokenizer):
    ids, truncated = encode_prompt(tokenizer, "What is the capital of France?", max_prompt_tokens=100)
    assert not truncated
    assert ids == templated(tokenizer, [{"role": "user", "content": "What is the capital of France?"}])
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")


def test_long_prompt_is_middle_truncated(tokenizer):
    words = [f"w{i}" for i in range(1000, 2500)]  # 5 tokens each
    text = "BEGIN " + " ".join(words) + " END"
    full, _ = encode_prompt(tokenizer, text, max_prompt_tokens=None)
    assert len(full) > 3000
    ids, truncated = encode_prompt(tokenizer, text, max_prompt_tokens=1000)
    assert truncated
    assert 990 <= len(ids) <= 1000
    decoded = tokenizer.decode(ids)
    user = decoded.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
    assert user.startswith("BEGIN w1000 w1001") and user.endswith("w2498 w2499 END")
    assert "w1750" not in user  # the middle is gone
    # Equal token halves: as many leading words kept as trailing ones (give or take the cut words).
    kept = [int(w[1:]) for w in user.split()[1:-1] if w[1:].isdigit()]
    head = sum(1 for k in kept if k < 1750)
    assert abs(head - (len(kept) - head)) <= 2
    assert decoded.endswith("<|im_start|>assistant\n")


def test_system_prompt_and_messages(tokenizer):
    ids, truncated = encode_prompt(
        tokenizer, [{"role": "user", "content": "Hi"}], 100, system_prompt="Be brief."
    )
    assert not truncated
    assert tokenizer.decode(ids).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi")
    with pytest.raises(ValueError, match="already has a system message"):
        encode_prompt(
            tokenizer, [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}], 100, "z"
        )


def test_truncates_longest_user_message_of_a_chat(tokenizer):
    chat = [
        {"role": "user", "content": "short question"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "HEAD " + "filler " * 800 + "TAIL"},
    ]
    ids, truncated = encode_prompt(tokenizer, chat, max_prompt_tokens=200)
    decoded = tokenizer.decode(ids)
    assert truncated and len(ids) <= 200
    assert "short question" in decoded and "HEAD filler" in decoded and "filler TAIL" in decoded


def test_limit_below_template_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="smaller than the chat template"):
        encode_prompt(tokenizer, "x " * 50, max_prompt_tokens=5)
