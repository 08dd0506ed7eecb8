"""At the start of a run: whether the prompts fit the model's context window, and which ones get cut.

``evaluate.py`` checks the window; training did not, so a model with ``max_position_embeddings=4096``
trained on 5,000-token prompts without a word, and ``data.max_prompt_tokens`` below the data's lengths cut
every prompt while ``val/acc/<length>`` kept the uncut length's name. :func:`check_prompt_fit` measures
templated prompts of the training and validation sources (one per target length for generated data, the
first :data:`PROBE` rows of a file) before anything is written: a prompt plus the generation budget beyond the
window is an error naming the fields, and cut prompts are said once, with counts.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from longact_pl.data.dataset import PromptDataset
from longact_pl.data.types import SampleSource

log = logging.getLogger(__name__)

# rows measured of a source without target lengths (a JSONL file)
PROBE = 64
# sources with target lengths: indices scanned for their lengths (metadata only, nothing generated)
SCAN = 200_000


@dataclass
class Fit:
    """What the probe of one source found.

    Attributes:
        longest: Longest templated prompt measured, before cutting (tokens).
        cut: Prompts longer than ``max_prompt_tokens`` (estimated for the whole source when it has lengths).
        total: Prompts that ``cut`` is out of.
        lengths: Target lengths of the cut prompts (generated data), for the message.
        probed: Whether only the first rows were measured (``cut`` of ``total`` measured ones).
    """

    longest: int
    cut: int
    total: int
    lengths: list[int]
    probed: bool


def _groups(source: SampleSource) -> dict[int, tuple[int, int]] | None:
    """``{target length: (first index, count)}`` from the source's metadata, or ``None`` without it."""
    length_of = getattr(source, "target_length", None)
    if not callable(length_of) or len(source) > SCAN:
        return None
    counts = Counter(length_of(i) for i in range(len(source)))
    first: dict[int, int] = {}
    for i in range(len(source)):
        first.setdefault(length_of(i), i)
        if len(first) == len(counts):
            break
    return {length: (first[length], n) for length, n in counts.items()}


def measure(source: SampleSource, tokenizer, max_prompt_tokens: int | None, system_prompt: str | None) -> Fit:
    """Probe ``source``: its longest templated prompt and how many exceed ``max_prompt_tokens``."""
    whole = PromptDataset(source, tokenizer, None, system_prompt)  # uncut lengths
    limit = max_prompt_tokens if max_prompt_tokens is not None else float("inf")
    groups = _groups(source)
    if groups is not None:
        sizes = {length: len(whole[i]["prompt_ids"]) for length, (i, _) in groups.items()}
        over = sorted(length for length, size in sizes.items() if size > limit)
        cut = sum(groups[length][1] for length in over)
        return Fit(max(sizes.values(), default=0), cut, len(source), over, probed=False)
    sizes = [len(whole[i]["prompt_ids"]) for i in range(min(len(source), PROBE))]
    return Fit(max(sizes, default=0), sum(s > limit for s in sizes), len(sizes), [], len(sizes) < len(source))


def check_prompt_fit(datamodule, model, max_new_tokens: int | None) -> None:
    """Refuse prompts that cannot fit the model's window; say once how many prompts are cut.

    Args:
        datamodule: ``LongContextDataModule`` (``train``, ``val``, ``tokenizer``, ``max_prompt_tokens``).
        model: The policy (its ``config.max_position_embeddings`` is the window, when declared).
        max_new_tokens: The generation budget (``rollout.max_new_tokens``; validation uses the same).

    Raises:
        ValueError: Naming the window, the longest prompt and the fields to change.
    """
    cap = datamodule.max_prompt_tokens
    window = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    budget = int(max_new_tokens or 0)
    cuts = []
    for field, source in (("data.train", datamodule.train), ("data.val", datamodule.val)):
        if source is None:
            continue
        fit = measure(source, datamodule.tokenizer, cap, datamodule.system_prompt)
        longest = min(fit.longest, cap) if cap is not None else fit.longest
        if window is not None and longest + budget > window:
            raise ValueError(
                f"{field} has prompts of {longest} tokens (after templating"
                + (f" and data.max_prompt_tokens={cap}" if cap is not None else "")
                + f"), plus rollout.max_new_tokens={budget}, beyond the model's context window "
                f"(max_position_embeddings={window}): positions past it are untrained. Lower the data's "
                f"lengths or set data.max_prompt_tokens <= {window - budget} (prompts are then cut in the "
                "middle), or use a model with a longer window (e.g. rope scaling in the model's config)"
            )
        if fit.cut:
            what = f"target lengths {fit.lengths}" if fit.lengths else "measured"
            first = f"the first {fit.total} " if fit.probed else ""
            cuts.append(f"{field}: {fit.cut} of {first}{fit.total} prompts ({what})")
    if cuts:
        log.warning(
            "data.max_prompt_tokens=%s cuts prompts in the middle: %s. Metrics named by length "
            "(val/acc/<length>) then describe the cut prompts; raise data.max_prompt_tokens to keep them "
            "whole",
            cap, "; ".join(cuts),
        )  # fmt: skip
