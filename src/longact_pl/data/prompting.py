"""Turn a sample prompt into chat-templated token ids, middle-truncating over-long user content."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def to_messages(prompt: str | list[dict], system_prompt: str | None = None) -> list[dict]:
    """Chat messages for ``prompt``, with ``system_prompt`` prepended as a system message when given.

    Raises:
        ValueError: If both ``system_prompt`` and a system message in ``prompt`` are given.
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if system_prompt is not None:
        if any(m["role"] == "system" for m in messages):
            raise ValueError("the prompt already has a system message; set data.system_prompt to null")
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def template_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> list[int]:
    """Token ids of ``messages`` under the tokenizer's chat template, ending with the assistant header.

    The template is rendered to text and encoded without extra special tokens (the template writes
    them), which sidesteps the dict/BatchEncoding return of ``apply_chat_template(tokenize=True)``.

    Raises:
        ValueError: If the tokenizer has no chat template.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; use an instruct "
            "model's tokenizer or set tokenizer.chat_template"
        )
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def middle_truncate(tokenizer: PreTrainedTokenizerBase, text: str, keep: int) -> str:
    """Keep the first ``keep // 2`` and the last ``keep - keep // 2`` tokens of ``text`` (LongBench)."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    if len(ids) <= keep:
        return text
    head, tail = keep // 2, keep - keep // 2
    left = tokenizer.decode(ids[:head], skip_special_tokens=True)
    right = tokenizer.decode(ids[len(ids) - tail :], skip_special_tokens=True) if tail else ""
    return left + right


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | list[dict],
    max_prompt_tokens: int | None,
    system_prompt: str | None = None,
) -> tuple[list[int], bool]:
    """Chat-template ``prompt`` and fit it into ``max_prompt_tokens``.

    If the templated prompt is too long, the content of the longest user message is cut in the middle
    (its first and last halves are kept, LongBench's rule) until the templated prompt fits.

    Args:
        tokenizer: A tokenizer with a chat template.
        prompt: The user message text, or a list of chat messages.
        max_prompt_tokens: Length limit of the templated prompt; ``None`` means no limit.
        system_prompt: Optional system message prepended to the chat.

    Returns:
        ``(ids, truncated)``: the templated token ids (ending with the assistant header) and whether the
        user content was cut.

    Raises:
        ValueError: If the template without any user content already exceeds the limit.
    """
    messages = to_messages(prompt, system_prompt)
    ids = template_ids(tokenizer, messages)
    if max_prompt_tokens is None or len(ids) <= max_prompt_tokens:
        return ids, False
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        raise ValueError("the prompt is too long and has no user message to truncate")
    target = max(users, key=lambda i: len(messages[i]["content"]))
    content = messages[target]["content"]
    keep = len(tokenizer(content, add_special_tokens=False, verbose=False)["input_ids"])
    # Re-encoding across the cut can merge or split a token or two, so shrink until it fits.
    for _ in range(20):
        keep -= len(ids) - max_prompt_tokens
        if keep < 0:
            raise ValueError(
                f"max_prompt_tokens={max_prompt_tokens} is smaller than the chat template itself; "
                "raise data.max_prompt_tokens"
            )
        messages[target] = {**messages[target], "content": middle_truncate(tokenizer, content, keep)}
        ids = template_ids(tokenizer, messages)
        if len(ids) <= max_prompt_tokens:
            return ids, True
    raise RuntimeError(f"could not truncate the prompt to {max_prompt_tokens} tokens")
