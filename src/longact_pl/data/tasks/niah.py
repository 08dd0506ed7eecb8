"""RULER's needle-in-a-haystack family: single, multi-key, multi-value and multi-query needles.

Every needle reads "One of the special magic {values} for {key} is: {value}.". ``num_keys`` keys each
get ``num_values`` values; ``num_queries`` of the keys are asked about and the references are all values
of the asked keys. The RULER variants are settings of one class:

* single: ``num_keys=1, num_values=1, num_queries=1``
* multikey: ``num_keys=4`` (three distractor needles with the same template), ask one
* multivalue: ``num_values=4`` for one key, ask all values
* multiquery: ``num_keys=4, num_queries=4``
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from longact_pl.data.fitting import count_tokens, fit_units
from longact_pl.data.haystack import Haystack, NoiseHaystack, SentencePool, insert_at_depths
from longact_pl.data.items import Numbers, WordPairs
from longact_pl.data.tasks.common import check_depth, join_queries, resolve_depths, sub_rng
from longact_pl.data.types import ItemMaker, Sample
from longact_pl.data.vocab import distinct

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

NEEDLE = "One of the special magic {plural} for {key} is: {value}."
INTRO = (
    "Some special magic {plural} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {plural} afterwards.\n{context}\n"
)
QUESTION_ONE = "What is the special magic {noun} for {query} mentioned in the provided text?"
QUESTION_MANY = "What are all the special magic {plural} for {query} mentioned in the provided text?"
PREFIX_ONE = "The special magic {noun} for {query} mentioned in the provided text is"
PREFIX_MANY = "The special magic {plural} for {query} mentioned in the provided text are"


class NeedleInAHaystack:
    """Needles with key/value facts hidden in filler text, fitted to a token length.

    Args:
        num_keys: Distinct keys, each with its own needle(s); the unasked ones are distractors.
        num_values: Values (needles) per key.
        num_queries: Keys asked about (``<= num_keys``).
        haystack: Filler source; ``None`` means :class:`NoiseHaystack`.
        keys: Maker of keys; ``None`` means :class:`WordPairs`.
        values: Maker of values; ``None`` means 7-digit :class:`Numbers`.
        depth: Where needles go, as a fraction of the filler: ``None`` draws a random depth per needle
            from the sample seed, a float puts all needles there, a list gives one depth per needle.
        name: Task name in samples and metrics; ``None`` derives ``niah_single``/``niah_multikey``/
            ``niah_multivalue``/``niah_multiquery`` from the counts.
    """

    def __init__(
        self,
        num_keys: int = 1,
        num_values: int = 1,
        num_queries: int = 1,
        haystack: Haystack | None = None,
        keys: ItemMaker | None = None,
        values: ItemMaker | None = None,
        depth: float | Sequence[float] | None = None,
        name: str | None = None,
    ) -> None:
        if min(num_keys, num_values, num_queries) < 1:
            raise ValueError("NeedleInAHaystack: num_keys, num_values and num_queries must all be >= 1")
        if num_queries > num_keys:
            raise ValueError(f"NeedleInAHaystack: num_queries={num_queries} exceeds num_keys={num_keys}")
        check_depth(depth, num_keys * num_values, "NeedleInAHaystack")
        self.num_keys = num_keys
        self.num_values = num_values
        self.num_queries = num_queries
        self.haystack = haystack if haystack is not None else NoiseHaystack()
        self.keys = keys if keys is not None else WordPairs()
        self.values = values if values is not None else Numbers(7)
        self.depth = depth
        self.name = name or self._default_name()

    def _default_name(self) -> str:
        if self.num_values > 1:
            return "niah_multivalue"
        if self.num_queries > 1:
            return "niah_multiquery"
        return "niah_multikey" if self.num_keys > 1 else "niah_single"

    def generate(self, target_tokens: int, seed: int, tokenizer: PreTrainedTokenizerBase) -> Sample:
        """Build the sample of ``seed`` whose prompt is within 5% of ``target_tokens`` tokens.

        Args:
            target_tokens: Wanted prompt length (tokens of ``tokenizer``, no chat template).
            seed: Sample seed; the same seed gives the same sample.
            tokenizer: Tokenizer that measures the length.
        """
        rng = sub_rng(seed, "needles")
        keys = distinct(lambda: self.keys.make(rng), self.num_keys)
        used: set[str] = set()
        values = [distinct(lambda: self.values.make(rng), self.num_values, used) for _ in keys]
        needles = [
            NEEDLE.format(plural=self.values.plural, key=k, value=v)
            for k, vs in zip(keys, values)
            for v in vs
        ]
        rng.shuffle(needles)
        depths = resolve_depths(self.depth, len(needles), rng)
        asked = sorted(rng.sample(range(self.num_keys), self.num_queries))
        queries = [keys[i] for i in asked]
        references = [v for i in asked for v in values[i]]
        query = join_queries(queries)
        fmt = dict(noun=self.values.noun, plural=self.values.plural, query=query)
        many = len(references) > 1
        question = (QUESTION_MANY if many else QUESTION_ONE).format(**fmt)
        pool = SentencePool(self.haystack, sub_rng(seed, "haystack"))

        def render(n: int) -> str:
            context = " ".join(insert_at_depths(pool.take(n), needles, depths))
            return INTRO.format(plural=self.values.plural, context=context) + question

        per_unit = count_tokens(tokenizer, " ".join(pool.take(20))) / 20
        prompt, _, tokens = fit_units(render, lambda t: count_tokens(tokenizer, t), target_tokens, per_unit)
        meta = {
            "target_length": target_tokens,
            "num_tokens": tokens,
            "depths": depths,
            "seed": seed,
            "queries": queries,
            "answer_prefix": (PREFIX_MANY if many else PREFIX_ONE).format(**fmt),
        }
        return Sample(prompt=prompt, references=references, task=self.name, meta=meta)
