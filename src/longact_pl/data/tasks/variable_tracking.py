"""RULER's variable tracking: follow a chain of ``VAR X = VAR Y`` assignments through filler text.

Chain ``c`` starts with ``VAR A = 12345.`` and each hop copies the previous variable
(``VAR B = VAR A.``). The question gives the first chain's value; the references are all variables of that
chain. The other chains, with different values, are distractors. Statements of one chain keep their order.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import TYPE_CHECKING

from longact_pl.data.fitting import count_tokens, fit_units
from longact_pl.data.haystack import Haystack, NoiseHaystack, SentencePool, insert_at_depths
from longact_pl.data.tasks.common import check_depth, resolve_depths, sub_rng
from longact_pl.data.types import Sample
from longact_pl.data.vocab import distinct

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

INTRO = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
QUESTION = "Question: Find all variables that are assigned the value {value} in the text above."
PREFIX = (
    "Answer: According to the chain(s) of variable assignment in the text above, {count} variables are "
    "assigned the value {value}, they are:"
)


class VariableTracking:
    """Variable-assignment chains hidden in filler text, fitted to a token length.

    Args:
        num_chains: Chains in the text; the first is asked about, the others are distractors.
        num_hops: Copies per chain (a chain names ``num_hops + 1`` variables).
        haystack: Filler source; ``None`` means :class:`NoiseHaystack`.
        depth: ``None`` draws a random depth per statement, a float puts all statements there, a list
            gives one depth per statement (``num_chains * (num_hops + 1)`` of them).
        name_length: Letters in a variable name.
        name: Task name; ``None`` means ``"vt"``.
    """

    def __init__(
        self,
        num_chains: int = 1,
        num_hops: int = 4,
        haystack: Haystack | None = None,
        depth: float | Sequence[float] | None = None,
        name_length: int = 5,
        name: str | None = None,
    ) -> None:
        if num_chains < 1 or num_hops < 1:
            raise ValueError("VariableTracking: num_chains and num_hops must be >= 1")
        check_depth(depth, num_chains * (num_hops + 1), "VariableTracking")
        self.num_chains = num_chains
        self.num_hops = num_hops
        self.haystack = haystack if haystack is not None else NoiseHaystack()
        self.depth = depth
        self.name_length = name_length
        self.name = name or "vt"

    def generate(self, target_tokens: int, seed: int, tokenizer: PreTrainedTokenizerBase) -> Sample:
        """Build the sample of ``seed`` whose prompt is within 5% of ``target_tokens`` tokens.

        Args:
            target_tokens: Wanted prompt length (tokens of ``tokenizer``, no chat template).
            seed: Sample seed; the same seed gives the same sample.
            tokenizer: Tokenizer that measures the length.
        """
        rng = sub_rng(seed, "chains")
        size = self.num_hops + 1
        names = distinct(
            lambda: "".join(rng.choices(string.ascii_uppercase, k=self.name_length)), self.num_chains * size
        )
        values = distinct(lambda: str(rng.randint(10000, 99999)), self.num_chains)
        chains = []
        for c in range(self.num_chains):
            var = names[c * size : (c + 1) * size]
            chain = [f"VAR {var[0]} = {values[c]}."]
            chain += [f"VAR {var[j + 1]} = VAR {var[j]}." for j in range(self.num_hops)]
            chains.append(chain)
        # Interleave the chains at random while keeping each chain's own order.
        statements: list[str] = []
        cursor = [0] * self.num_chains
        while len(statements) < self.num_chains * size:
            c = rng.choice([i for i in range(self.num_chains) if cursor[i] < size])
            statements.append(chains[c][cursor[c]])
            cursor[c] += 1
        depths = resolve_depths(self.depth, len(statements), rng)
        pool = SentencePool(self.haystack, sub_rng(seed, "haystack"))
        question = QUESTION.format(value=values[0])

        def render(n: int) -> str:
            context = " ".join(insert_at_depths(pool.take(n), statements, depths))
            return INTRO.format(context=context) + question

        per_unit = count_tokens(tokenizer, " ".join(pool.take(20))) / 20
        prompt, _, tokens = fit_units(render, lambda t: count_tokens(tokenizer, t), target_tokens, per_unit)
        references = names[:size]
        meta = {
            "target_length": target_tokens,
            "num_tokens": tokens,
            "depths": depths,
            "seed": seed,
            "answer_prefix": PREFIX.format(count=size, value=values[0]),
        }
        return Sample(prompt=prompt, references=references, task=self.name, meta=meta)
