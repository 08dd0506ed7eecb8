"""Task pieces RULER needs beyond the training generators.

* :class:`NeedleHaystack` is RULER's ``type_haystack: needle`` (niah_multikey_2/3): the filler itself is
  made of needles with other keys, so the model must find one key among thousands.
* :class:`LengthSwitch` picks a task by target length (RULER's cwe uses lighter settings below 4096 tokens).
* :class:`RejectAmbiguous` redraws a sample whose distractor needles happen to reuse an asked key (with
  small key vocabularies and long contexts this becomes likely; RULER silently keeps such samples).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from longact_pl.data.items import Numbers, WordPairs
from longact_pl.data.sources import derive_seed
from longact_pl.data.tasks.niah import NEEDLE
from longact_pl.data.types import ItemMaker, Sample, Task

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class NeedleHaystack:
    """Filler made of distractor needles: ``"One of the special magic numbers for <key> is: <value>."``.

    Args:
        keys: Maker of the distractor keys; ``None`` means :class:`WordPairs`. Use the same maker as the
            task's keys so the asked needle cannot be told apart by its form.
        values: Maker of the distractor values; ``None`` means 7-digit :class:`Numbers`.
    """

    def __init__(self, keys: ItemMaker | None = None, values: ItemMaker | None = None) -> None:
        self.keys = keys if keys is not None else WordPairs()
        self.values = values if values is not None else Numbers(7)

    def stream(self, rng: random.Random) -> Iterator[str]:
        """Yield distractor needles forever, drawing keys and values from ``rng``."""
        while True:
            key, value = self.keys.make(rng), self.values.make(rng)
            yield NEEDLE.format(plural=self.values.plural, key=key, value=value)


class LengthSwitch:
    """Use ``short`` below ``boundary`` tokens and ``long`` from there on (samples keep ``name``).

    Args:
        short: Task for target lengths ``< boundary``.
        long: Task for target lengths ``>= boundary``.
        boundary: Switch length in tokens (RULER's cwe: 4096).
        name: Task name written into every sample.
    """

    def __init__(self, short: Task, long: Task, boundary: int, name: str) -> None:
        if boundary < 1:
            raise ValueError(f"LengthSwitch: boundary must be >= 1 token, got {boundary}")
        self.short = short
        self.long = long
        self.boundary = boundary
        self.name = name

    def generate(self, target_tokens: int, seed: int, tokenizer: PreTrainedTokenizerBase) -> Sample:
        """Generate with the task of this length, renamed to :attr:`name`."""
        task = self.short if target_tokens < self.boundary else self.long
        sample = task.generate(target_tokens, seed, tokenizer)
        return Sample(sample.prompt, sample.references, self.name, sample.meta)


class RejectAmbiguous:
    """Redraw needle samples in which a distractor needle names an asked key with a non-reference value.

    Only needle tasks (samples with ``meta["queries"]``) are checked; other samples pass through.

    Args:
        task: The needle task.
        max_tries: Seeds tried before giving up.
    """

    def __init__(self, task: Task, max_tries: int = 20) -> None:
        if max_tries < 1:
            raise ValueError(f"RejectAmbiguous: max_tries must be >= 1, got {max_tries}")
        self.task = task
        self.max_tries = max_tries
        self.name = task.name

    @staticmethod
    def is_ambiguous(sample: Sample) -> bool:
        """True if some needle of an asked key carries a value that is not a reference."""
        text = sample.prompt if isinstance(sample.prompt, str) else str(sample.prompt)
        refs = set(sample.references)
        for key in sample.meta.get("queries", []):
            found = re.findall(rf"for {re.escape(key)} is: (\S+?)\.(?:\s|$)", text)
            if any(value not in refs for value in found):
                return True
        return False

    def generate(self, target_tokens: int, seed: int, tokenizer: PreTrainedTokenizerBase) -> Sample:
        """The sample of ``seed``, or of the first derived seed whose needles are unambiguous.

        Raises:
            RuntimeError: If ``max_tries`` seeds all gave ambiguous samples.
        """
        for attempt in range(self.max_tries):
            trial = seed if attempt == 0 else derive_seed(seed, attempt)
            sample = self.task.generate(target_tokens, trial, tokenizer)
            if not self.is_ambiguous(sample):
                return sample
        raise RuntimeError(
            f"RejectAmbiguous: {self.max_tries} samples of {self.name} at {target_tokens} tokens all reuse "
            "an asked key in a distractor; use a key maker with more distinct keys (e.g. Uuids)"
        )
