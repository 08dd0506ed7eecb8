"""Question answering over synthetic documents, in RULER's QA prompt format, with no download.

Each document describes a fictional town (pseudo-word names, so no fact can be known beforehand): its
river, founding year and founder, best-known product and mayor, plus a little essay filler. One *gold*
document answers the question; the rest are distractors with the same structure. Length is fitted at the
granularity of one sentence: the last distractor may be cut short.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import TYPE_CHECKING

from longact_pl.data.fitting import count_tokens, fit_units
from longact_pl.data.haystack import EssayHaystack
from longact_pl.data.tasks.common import check_depth, resolve_depths, sub_rng
from longact_pl.data.types import Sample
from longact_pl.data.vocab import pseudo_word

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

INSTRUCTION = (
    "Answer the question based on the given documents. "
    "Only give me the answer and do not output any other words."
)
TEMPLATE = (
    INSTRUCTION
    + "\n\nThe following are given documents.\n\n{context}\n\n"
    + INSTRUCTION
    + "\n\nQuestion: {query}"
)
PREFIX = "Answer:"
# Products are not in the filler word lists and are not short enough to hide inside common words.
PRODUCTS: tuple[str, ...] = (
    "copper", "wool", "salt", "timber", "honey", "glass", "silk", "cheese", "pottery", "marble", "leather",
    "wine", "cotton", "tobacco", "amber", "pearls", "saffron", "indigo", "furs", "soap", "spices", "ivory",
    "lace",
)  # fmt: skip
# (question, fact) pairs; the fact names the reference in the town record.
QUESTIONS: tuple[tuple[str, str], ...] = (
    ("Who founded the town of {town}?", "founder"),
    ("In which year was the town of {town} founded?", "year"),
    ("On the banks of which river does the town of {town} lie?", "river"),
    ("What product is the town of {town} best known for?", "product"),
    ("Who is the current mayor of the town of {town}?", "mayor"),
)


def _name(rng: random.Random, syllables: int) -> str:
    return pseudo_word(rng, syllables).capitalize()


def _town(rng: random.Random, name: str, filler: EssayHaystack) -> tuple[dict[str, str], list[str]]:
    """Make a random town record and its document sentences."""
    fact = {
        "town": name,
        "river": _name(rng, 2),
        "year": str(rng.randint(1200, 1899)),
        "founder": f"{_name(rng, 2)} {_name(rng, 2)}",
        "product": rng.choice(PRODUCTS),
        "mayor": f"{_name(rng, 2)} {_name(rng, 2)}",
    }
    facts = [
        f"{name} was founded in {fact['year']} by {fact['founder']}.",
        f"Travellers know {name} best for its {fact['product']}.",
        f"The current mayor of {name} is {fact['mayor']}.",
    ]
    rng.shuffle(facts)
    # The first sentence always names the town, so even a cut-short document is about one town.
    sentences = [f"{name} is a small town on the banks of the {fact['river']} River.", *facts]
    sentences += [filler.sentence(rng) for _ in range(rng.randint(0, 2))]
    return fact, sentences


class SyntheticQA:
    """One gold document among fictional-town distractors, fitted to a token length.

    Args:
        depth: Where the gold document goes among the documents (fraction ``0..1``); ``None`` draws it
            from the sample seed.
        name: Task name; ``None`` means ``"qa_synthetic"``.
    """

    def __init__(self, depth: float | None = None, name: str | None = None) -> None:
        check_depth(depth, 1, "SyntheticQA")
        self.depth = depth
        self.name = name or "qa_synthetic"
        self.filler = EssayHaystack()

    def _distractors(self, rng: random.Random, taken: set[str]) -> Iterator[list[str]]:
        while True:
            name = _name(rng, 3)
            if name not in taken:
                taken.add(name)
                yield _town(rng, name, self.filler)[1]

    def generate(self, target_tokens: int, seed: int, tokenizer: PreTrainedTokenizerBase) -> Sample:
        """Build the sample of ``seed`` whose prompt is within 5% of ``target_tokens`` tokens.

        Args:
            target_tokens: Wanted prompt length (tokens of ``tokenizer``, no chat template).
            seed: Sample seed; the same seed gives the same sample.
            tokenizer: Tokenizer that measures the length.
        """
        rng = sub_rng(seed, "gold")
        fact, gold = _town(rng, _name(rng, 3), self.filler)
        question, key = rng.choice(QUESTIONS)
        query = question.format(town=fact["town"])
        depth = resolve_depths(self.depth, 1, rng)[0]
        stream = self._distractors(sub_rng(seed, "docs"), {fact["town"]})
        docs: list[list[str]] = []

        def render(n: int) -> str:
            # The first n distractor sentences, document by document; the last document may be cut.
            chosen, left = [], n
            for i in range(n):
                if i >= len(docs):
                    docs.append(next(stream))
                if left <= 0:
                    break
                chosen.append(docs[i][:left])
                left -= len(chosen[-1])
            chosen.insert(round(depth * len(chosen)), gold)
            context = "\n\n".join(f"Document {i + 1}:\n" + " ".join(d) for i, d in enumerate(chosen))
            return TEMPLATE.format(context=context, query=query)

        prompt, _, tokens = fit_units(render, lambda t: count_tokens(tokenizer, t), target_tokens, 14.0)
        meta = {
            "target_length": target_tokens,
            "num_tokens": tokens,
            "depths": [depth],
            "seed": seed,
            "question": key,
            "town": fact["town"],
            "answer_prefix": PREFIX,
        }
        return Sample(prompt=prompt, references=[fact[key]], task=self.name, meta=meta)
