"""A torch Dataset that turns source samples into chat-templated prompt records for the trainer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch.utils.data import Dataset

from longact_pl.data.docqa import fit_document
from longact_pl.data.prompting import encode_prompt
from longact_pl.data.types import SampleSource

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Keys of every record (and so of every dict in a batch).
RECORD_KEYS = ("prompt_ids", "references", "task", "target_length", "truncated", "index")
# Sample meta copied into the record when present (DocQA: the judge's question, the citation reward's ids).
META_KEYS = ("question", "chunk_ids", "evidence")


class PromptDataset(Dataset):
    """Records ``{prompt_ids, references, task, target_length, truncated, index}`` of a sample source.

    ``target_length`` is the sample's ``meta["target_length"]`` when it has one, else the templated
    prompt length (for JSONL data without lengths).

    Args:
        source: The samples.
        tokenizer: Tokenizer with a chat template.
        max_prompt_tokens: Longer templated prompts are middle-truncated to this.
        system_prompt: Optional system message.
    """

    def __init__(
        self,
        source: SampleSource,
        tokenizer: PreTrainedTokenizerBase,
        max_prompt_tokens: int | None,
        system_prompt: str | None = None,
    ) -> None:
        self.source = source
        self.tokenizer = tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.system_prompt = system_prompt

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.source[index]
        meta = sample.meta
        if "template" in meta and "context" in meta:  # DocQA: only the document's middle is ever cut
            ids, truncated = fit_document(self.tokenizer, meta["template"], meta["context"], meta["question"],
                                          self.max_prompt_tokens, self.system_prompt)  # fmt: skip
        else:
            ids, truncated = encode_prompt(
                self.tokenizer, sample.prompt, self.max_prompt_tokens, self.system_prompt
            )
        return {
            **{k: meta[k] for k in META_KEYS if k in meta},
            "prompt_ids": ids,
            "references": list(sample.references),
            "task": sample.task,
            "target_length": int(sample.meta.get("target_length") or len(ids)),
            "truncated": truncated,
            "index": index,
        }


class WithPadding(Dataset):
    """``data`` plus padding records: index ``len(data) + i`` is record ``i`` with ``"padding": True``.

    Under FSDP every rank must run the same number of validation batches (each generation step is a
    collective), so a rank whose share of the validation set is one sample short is topped up with a
    padding record: generated like the others, never scored (:func:`drop_padding`).
    """

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return 2 * len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.data)
        return self.data[index] if index < n else {**self.data[index - n], "padding": True}


def drop_padding(records: list[dict[str, Any]], scores: Any) -> tuple[list[dict[str, Any]], Any]:
    """The records that are not padding, and their scores (``[B]``, one per record)."""
    keep = [i for i, r in enumerate(records) if not r.get("padding", False)]
    return [records[i] for i in keep], scores[keep]


def keep_list(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Collate function that keeps the batch as a list of records (prompts have different lengths)."""
    return batch
