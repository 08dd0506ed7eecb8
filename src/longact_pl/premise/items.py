"""Paired-length items: one task sample rendered at a short and a long length with the same facts.

A task's ``generate(length, seed, tokenizer)`` draws needles, question and answer from the seed alone and only
the amount of filler from the length, so two lengths of one seed differ only in the context around the same
needles. The scored tokens are the answer: the chat-templated prompt, then the task's ``answer_prefix`` (the
sentence a model echoes before the value), then the reference values; only the values carry the NLL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from longact_pl.data.prompting import encode_prompt
from longact_pl.data.types import Task

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Rendered:
    """One item at one length.

    Attributes:
        ids: Prompt, answer prefix and answer token ids.  # [T]
        n_answer: How many trailing ids are the scored answer.
        prompt_tokens: Length of the chat-templated prompt alone.
    """

    ids: list[int]
    n_answer: int
    prompt_tokens: int


@dataclass(frozen=True)
class PairedItem:
    """One held-out sample at every length of the run (same needles, question and answer).

    Attributes:
        seed: The task seed.
        answer: The scored answer text.
        lengths: Target length -> rendering, in the order given.
    """

    seed: int
    answer: str
    lengths: dict[int, Rendered]


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def render(
    task: Task, tokenizer: PreTrainedTokenizerBase, seed: int, length: int, system_prompt: str | None = None
) -> tuple[Rendered, str]:
    """Render the sample of ``seed`` at ``length`` tokens with its scored answer.

    Args:
        task: A task with ``generate(length, seed, tokenizer)`` (``longact_pl.data.tasks``).
        tokenizer: The model's tokenizer (with a chat template).
        seed: Sample seed (decides needles, question and answer).
        length: Target prompt length (the task's user text, before the chat template).
        system_prompt: Optional system message (``data.system_prompt``).

    Returns:
        ``(rendering, answer text)``.

    Raises:
        ValueError: If the sample has no references to score.
    """
    sample = task.generate(length, seed, tokenizer)
    if not sample.references:
        raise ValueError(f"task {sample.task!r} gave seed {seed} no references; premise needs an answer")
    answer = ", ".join(sample.references)
    prompt, _ = encode_prompt(tokenizer, sample.prompt, None, system_prompt)
    prefix = sample.meta.get("answer_prefix")
    lead = _ids(tokenizer, prefix) if prefix else []
    target = _ids(tokenizer, (" " if prefix else "") + answer)
    return Rendered(ids=prompt + lead + target, n_answer=len(target), prompt_tokens=len(prompt)), answer


def paired_item(
    task: Task,
    tokenizer: PreTrainedTokenizerBase,
    seed: int,
    lengths: Sequence[int],
    system_prompt: str | None = None,
) -> PairedItem:
    """Render one seed at every length; the answers must agree (the task draws them from the seed alone).

    Raises:
        ValueError: If two lengths of one seed give different answers (a task whose facts depend on length
            cannot be paired).
    """
    out: dict[int, Rendered] = {}
    answers = set()
    for length in lengths:
        out[int(length)], answer = render(task, tokenizer, seed, int(length), system_prompt)
        answers.add(answer)
    if len(answers) != 1:
        raise ValueError(
            f"seed {seed} gives different answers at lengths {list(lengths)}: {sorted(answers)}; the task "
            "must draw its facts from the seed alone (use a longact_pl.data.tasks NIAH/QA task)"
        )
    return PairedItem(seed=seed, answer=answers.pop(), lengths=out)
