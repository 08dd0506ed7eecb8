"""Several sample sources served as one, e.g. a held-out set of two task families at their own lengths."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from longact_pl.data.types import Sample, SampleSource

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def target_length(source: SampleSource, index: int) -> int:
    """The length item ``index`` of ``source`` is generated at without generating it (0 when unknown)."""
    fn = getattr(source, "target_length", None)
    return int(fn(index)) if callable(fn) else 0


class ConcatSource:
    """The items of ``sources`` one after another: item ``i`` of the second source is ``len(first) + i``.

    Each part keeps its own task, lengths and seed, so adding a part never changes the items of the others
    (their ids in ``val_predictions/`` stay the same).

    Args:
        sources: The parts, in order.

    Raises:
        ValueError: If ``sources`` is empty.
    """

    def __init__(self, sources: Sequence[SampleSource]) -> None:
        if not sources:
            raise ValueError("ConcatSource: give at least one source in sources=[...]")
        self.sources = list(sources)

    def set_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Hand ``tokenizer`` to every part that measures lengths with one."""
        for source in self.sources:
            setter = getattr(source, "set_tokenizer", None)
            if callable(setter):
                setter(tokenizer)

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    def _locate(self, index: int) -> tuple[SampleSource, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        for source in self.sources:
            if index < len(source):
                return source, index
            index -= len(source)
        raise AssertionError("unreachable")

    def __getitem__(self, index: int) -> Sample:
        source, local = self._locate(index)
        return source[local]

    def target_length(self, index: int) -> int:
        """The target length of item ``index`` (0 when its part does not know it before generating)."""
        source, local = self._locate(index)
        return target_length(source, local)
