"""Does Q/K activation concentration grow with context length? Same items at several lengths, split by token.

The observation LongAct starts from is that long inputs concentrate Q/K activation mass in a few channels. A
fair test renders the *same* items (needles, question, answer) at every length and separates what could
fake a rise:

* question tokens (the same text at every length) vs context tokens (what the length adds);
* layer 0 as a control: its pre-RoPE queries and keys depend on the token alone, so a change there with
  length is a change of token mix (more filler), not of context.

:func:`concentration_table` gives, per length and target group, the top-``ratio`` L1 share averaged over the
layers after the first, for all / context / question tokens, and layer 0's share (all tokens).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from longact_pl.data.prompting import to_messages
from longact_pl.masking.mask_metrics import top_share
from longact_pl.masking.stats import ChannelStats, StatsCollector
from longact_pl.masking.targets import Target

KINDS = ("all", "context", "question")


@dataclass(frozen=True)
class SplitPrompt:
    """A chat-templated prompt and where its question starts.

    Attributes:
        ids: Token ids.  # [T]
        question_start: First token of the question (every later token is question or chat template).
    """

    ids: list[int]
    question_start: int


def split_prompt(tokenizer, prompt: str, question: str, system_prompt: str | None = None) -> SplitPrompt:
    """Chat-template ``prompt`` and find the token where ``question`` (its last part) starts.

    Raises:
        ValueError: If ``question`` is not in the templated text.
    """
    text = tokenizer.apply_chat_template(
        to_messages(prompt, system_prompt), tokenize=False, add_generation_prompt=True
    )
    at = text.rfind(question)
    if at < 0:
        raise ValueError(f"question {question[:40]!r}... not found in the templated prompt")
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    head = tokenizer(text[:at], add_special_tokens=False, verbose=False)["input_ids"]
    return SplitPrompt(ids=list(ids), question_start=len(head))


def niah_prompts(tokenizer, lengths: Sequence[int], samples: int, seed: int) -> dict[int, list[SplitPrompt]]:
    """The same NIAH multikey items (seeds ``seed * 1000 + i``) at every length, split at the question."""
    from longact_pl.data.tasks.niah import NeedleInAHaystack

    task = NeedleInAHaystack(num_keys=4)
    out: dict[int, list[SplitPrompt]] = {}
    for length in lengths:
        out[length] = []
        for i in range(samples):
            sample = task.generate(length, seed * 1000 + i, tokenizer)
            question = sample.prompt.rsplit("\n", 1)[-1]  # NIAH: "...context\n" + question
            out[length].append(split_prompt(tokenizer, sample.prompt, question))
    return out


@torch.no_grad()
def collect_split(
    model: nn.Module, targets: Sequence[Target], prompts: Sequence[SplitPrompt]
) -> dict[str, dict[str, ChannelStats]]:
    """Channel statistics over all, context and question tokens of ``prompts`` (one forward each).

    Returns:
        Kind (``all``, ``context``, ``question``) -> target name -> statistics.
    """
    gates: dict[str, Tensor | None] = dict.fromkeys(KINDS)
    probes = {t.name: t.probe for t in targets}
    collectors = {k: StatsCollector(probes, gate=lambda k=k: gates[k]) for k in KINDS}
    device = next(model.parameters()).device
    trunk = getattr(model, "base_model", model)
    was = model.training
    model.eval()
    for c in collectors.values():
        c.attach()
    try:
        for p in prompts:
            ids = torch.tensor([p.ids], device=device)  # [1, T]
            pos = torch.arange(ids.shape[1], device=device)[None]  # [1, T]
            gates["all"] = torch.ones_like(ids, dtype=torch.bool)  # [1, T]
            gates["context"] = pos < p.question_start  # [1, T]
            gates["question"] = pos >= p.question_start  # [1, T]
            trunk(input_ids=ids, use_cache=False)
    finally:
        for c in collectors.values():
            c.detach()
        model.train(was)
    return {k: c.stats for k, c in collectors.items()}


def concentration_table(
    split_by_length: Mapping[int, Mapping[str, Mapping[str, ChannelStats]]],
    targets: Sequence[Target],
    ratio: float,
    groups: Sequence[str] = ("q_proj", "k_proj"),
) -> list[dict[str, float | int | str]]:
    """Per length and group: top-``ratio`` L1 share (mean over layers 1+) per token kind, and layer 0's.

    Returns:
        Rows ``{"length", "group", "all", "context", "question", "layer0"}`` in length order.
    """
    rows = []
    for length in sorted(split_by_length):
        split = split_by_length[length]
        for g in groups:
            names = [t.name for t in targets if t.group == g]
            row: dict[str, float | int | str] = {"length": length, "group": g}
            for kind in KINDS:
                shares = [top_share(split[kind][n].statistic("mean_abs"), ratio) for n in names[1:]]
                row[kind] = sum(shares) / len(shares) if shares else float("nan")
            row["layer0"] = top_share(split["all"][names[0]].statistic("mean_abs"), ratio)
            rows.append(row)
    return rows
