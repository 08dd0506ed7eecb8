"""The sample record shared by every task and source, and the small protocols they satisfy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Sample:
    """One prompt with the answers that score it.

    Attributes:
        prompt: The user message text (context and question), or a list of chat messages
            (``{"role": ..., "content": ...}``).
        references: Reference answers; ``string_match_all`` wants every one of them in the completion.
        task: Task name, e.g. ``"niah_multikey"``; metrics are grouped by it.
        meta: Free-form details: ``target_length``, ``num_tokens``, ``depths``, ``seed``,
            ``answer_prefix``, ...
    """

    prompt: str | list[dict]
    references: list[str]
    task: str
    meta: dict = field(default_factory=dict)


@runtime_checkable
class SampleSource(Protocol):
    """A finite, indexable collection of samples."""

    def __len__(self) -> int:
        """Return the number of samples."""
        ...

    def __getitem__(self, index: int) -> Sample:
        """Return the sample at ``index`` (``0 <= index < len(self)``)."""
        ...


class Task(Protocol):
    """A synthetic task that builds a sample of a requested token length."""

    name: str

    def generate(self, target_tokens: int, seed: int, tokenizer: PreTrainedTokenizerBase) -> Sample:
        """Build the sample for ``seed`` whose prompt text is about ``target_tokens`` tokens long."""
        ...


class ItemMaker(Protocol):
    """Makes random needle keys or values (words, numbers, uuids).

    Attributes:
        noun: How the question names one item (``"number"``).
        plural: How it names several (``"numbers"``).
    """

    noun: str
    plural: str

    def make(self, rng: Any) -> str:
        """One random item drawn from ``rng`` (a ``random.Random``)."""
        ...
