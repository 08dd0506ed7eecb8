"""RULER's aggregation tasks: common-words extraction (cwe) and frequent-words extraction (fwe).

* cwe: a numbered list where ``num_common`` words appear ``common_repeats`` times each and the others
  ``uncommon_repeats`` times; the references are the common words. Length grows with the number of
  uncommon words.
* fwe: random coded words drawn with Zipf frequencies (rank ``k`` appears ``floor(N k^-alpha / Z)``
  times, ``Z`` normalising over the vocabulary); rank 1 is the noise token ``....``, the references are
  ranks 2 to ``num_answers + 1``. Length grows with ``N``.
"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING

from longact_pl.data.fitting import count_tokens, fit_units
from longact_pl.data.tasks.common import sub_rng
from longact_pl.data.types import Sample
from longact_pl.data.vocab import ADJECTIVES, ADVERBS, NOUNS, VERBS, distinct, pseudo_word

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n{context}\n"
    "Question: What are the {k} most common words in the above list?"
)
CWE_PREFIX = "Answer: The top {k} words that appear most often in the list are:"
FWE_TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. "
    "Find the {k} most frequently appeared coded words. {context}\n"
    "Question: Do not provide any explanation. Please ignore the dots '....'. "
    "What are the {k} most frequently appeared words in the above coded text?"
)
FWE_PREFIX = "Answer: According to the coded text above, the {k} most frequently appeared words are:"
NOISE_WORD = "...."


class CommonWords:
    """Common-words extraction over a numbered word list, fitted to a token length.

    The word pool mixes everyday English words with pseudo-words (needed beyond a few hundred distinct
    words) and is shuffled before the common words are drawn, so "common" never means "English".

    Args:
        num_common: Words asked for (the references).
        common_repeats: Occurrences of each common word (RULER: 30; needs about 2k tokens with 10 words).
        uncommon_repeats: Occurrences of each other word (must be smaller).
        name: Task name; ``None`` means ``"cwe"``.
    """

    def __init__(
        self,
        num_common: int = 10,
        common_repeats: int = 30,
        uncommon_repeats: int = 3,
        name: str | None = None,
    ) -> None:
        if num_common < 1 or uncommon_repeats < 1:
            raise ValueError("CommonWords: num_common and uncommon_repeats must be >= 1")
        if common_repeats <= uncommon_repeats:
            raise ValueError(
                f"CommonWords: common_repeats={common_repeats} must exceed "
                f"uncommon_repeats={uncommon_repeats}"
            )
        self.num_common = num_common
        self.common_repeats = common_repeats
        self.uncommon_repeats = uncommon_repeats
        self.name = name or "cwe"

    def _pool(self, size: int, seed: int) -> list[str]:
        rng = sub_rng(seed, "words")
        english = sorted(set(NOUNS + ADJECTIVES + VERBS + ADVERBS))
        rng.shuffle(english)
        pool = english[:size]
        if size > len(pool):
            pool += distinct(lambda: pseudo_word(rng), size - len(pool), set(english))
        rng.shuffle(pool)
        return pool

    def generate(self, target_tokens: int, seed: int, tokenizer: PreTrainedTokenizerBase) -> Sample:
        """Build the sample of ``seed`` whose prompt is within 5% of ``target_tokens`` tokens.

        Args:
            target_tokens: Wanted prompt length (tokens of ``tokenizer``, no chat template).
            seed: Sample seed; the same seed gives the same sample.
            tokenizer: Tokenizer that measures the length.

        Raises:
            ValueError: If the common words alone overshoot the target.
        """
        # Every list item ("12. word") takes at least 3 tokens, so this pool cannot run out.
        max_uncommon = target_tokens // (3 * self.uncommon_repeats) + 8
        pool = self._pool(self.num_common + max_uncommon, seed)
        common = pool[: self.num_common]

        def render(n: int) -> str:
            if n > max_uncommon:
                raise ValueError(f"CommonWords: the word pool holds {max_uncommon} uncommon words, {n} asked")
            words = (
                common * self.common_repeats
                + pool[self.num_common : self.num_common + n] * self.uncommon_repeats
            )
            sub_rng(seed, f"order/{n}").shuffle(words)
            context = " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))
            return CWE_TEMPLATE.format(context=context, k=self.num_common)

        prompt, _, tokens = fit_units(
            render, lambda t: count_tokens(tokenizer, t), target_tokens, 5.0 * self.uncommon_repeats
        )
        meta = {
            "target_length": target_tokens,
            "num_tokens": tokens,
            "seed": seed,
            "answer_prefix": CWE_PREFIX.format(k=self.num_common),
        }
        return Sample(prompt=prompt, references=list(common), task=self.name, meta=meta)


class FrequentWords:
    """Frequent-words extraction over Zipf-distributed coded words, fitted to a token length.

    Args:
        num_answers: Most frequent real words asked for (after the noise word).
        vocab_size: Distinct coded words.
        word_length: Letters per coded word.
        alpha: Zipf exponent (larger: steeper frequencies, easier).
        name: Task name; ``None`` means ``"fwe"``.
    """

    def __init__(
        self,
        num_answers: int = 3,
        vocab_size: int = 2000,
        word_length: int = 6,
        alpha: float = 2.0,
        name: str | None = None,
    ) -> None:
        if num_answers < 1 or vocab_size < num_answers + 2:
            raise ValueError("FrequentWords: need num_answers >= 1 and vocab_size >= num_answers + 2")
        if alpha <= 1.0:
            raise ValueError(f"FrequentWords: alpha={alpha} must be > 1 for a Zipf law")
        self.num_answers = num_answers
        self.vocab_size = vocab_size
        self.word_length = word_length
        self.alpha = alpha
        self.name = name or "fwe"

    def counts(self, num_words: int) -> list[int]:
        """Occurrences of each vocabulary rank for a text of about ``num_words`` words."""
        weights = [k ** (-self.alpha) for k in range(1, self.vocab_size + 1)]
        z = sum(weights)
        return [int(num_words * w / z) for w in weights]

    def generate(self, target_tokens: int, seed: int, tokenizer: PreTrainedTokenizerBase) -> Sample:
        """Build the sample of ``seed`` whose prompt is within 5% of ``target_tokens`` tokens.

        Args:
            target_tokens: Wanted prompt length (tokens of ``tokenizer``, no chat template).
            seed: Sample seed; the same seed gives the same sample.
            tokenizer: Tokenizer that measures the length.

        Raises:
            ValueError: If the target is too short for the answer words to have distinct counts.
        """
        rng = sub_rng(seed, "vocab")
        vocab = [NOISE_WORD] + distinct(
            lambda: "".join(rng.choices(string.ascii_lowercase, k=self.word_length)), self.vocab_size - 1
        )

        def render(n: int) -> str:
            words = [w for w, c in zip(vocab, self.counts(n)) for _ in range(c)]
            sub_rng(seed, f"order/{n}").shuffle(words)
            return FWE_TEMPLATE.format(context=" ".join(words), k=self.num_answers)

        prompt, n, tokens = fit_units(render, lambda t: count_tokens(tokenizer, t), target_tokens, 3.0)
        top = self.counts(n)[: self.num_answers + 2]
        if any(a <= b for a, b in zip(top[1:], top[2:])):
            raise ValueError(
                f"FrequentWords: at {target_tokens} tokens the top word counts {top} tie; "
                "use a longer target length or a larger alpha"
            )
        meta = {
            "target_length": target_tokens,
            "num_tokens": tokens,
            "seed": seed,
            "answer_prefix": FWE_PREFIX.format(k=self.num_answers),
        }
        return Sample(prompt=prompt, references=vocab[1 : self.num_answers + 1], task=self.name, meta=meta)
