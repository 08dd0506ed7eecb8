"""What a rollout engine returns, and the small protocol every engine satisfies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class RolloutBatch:
    """G completions for each of B prompts, laid out as ``[left-padded prompt | right-padded completion]``.

    Rows ``g*G .. g*G+G-1`` belong to prompt ``g``. Completion tokens after the first EOS are masked out
    (the EOS itself is kept: the policy is trained to stop).

    Attributes:
        input_ids: ``[N, P + C]`` prompt and completion token ids (N = B * G).
        attention_mask: ``[N, P + C]`` 1 for real prompt tokens and completion tokens up to EOS.
        completion_mask: ``[N, C]`` 1 for completion tokens up to and including the first EOS.
        behaviour_logp: ``[N, C]`` log-probs of the sampled tokens under the sampling policy
            (at the sampling temperature), 0 where masked.
        completions: The N decoded completions (special tokens stripped).
        prompt_width: P, the padded prompt width.
        group_size: G.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    behaviour_logp: torch.Tensor
    completions: list[str]
    prompt_width: int
    group_size: int

    @property
    def completion_lengths(self) -> torch.Tensor:
        """Number of real completion tokens per row, ``[N]``."""
        return self.completion_mask.sum(-1)

    def select_groups(self, keep: torch.Tensor) -> RolloutBatch:
        """Keep only the groups where ``keep`` (``[B]`` bool) is True."""
        rows = keep.repeat_interleave(self.group_size)  # [N]
        idx = rows.nonzero().squeeze(-1)  # [N']
        return RolloutBatch(
            input_ids=self.input_ids[idx],
            attention_mask=self.attention_mask[idx],
            completion_mask=self.completion_mask[idx],
            behaviour_logp=self.behaviour_logp[idx],
            completions=[self.completions[i] for i in idx.tolist()],
            prompt_width=self.prompt_width,
            group_size=self.group_size,
        )


class RolloutEngine(Protocol):
    """Anything that samples G completions per prompt from the current policy.

    Attributes:
        group_size: G, completions per prompt.
        temperature: Sampling temperature; the trainer's log-probs are taken at the same temperature.
        top_p: Nucleus mass (training needs 1.0: the trainer's log-probs are the full softmax).
        top_k: Top-k filter (training needs 0, see ``top_p``).
        max_new_tokens: Generation budget.
        external: True when a separate engine samples from its own copy of the weights (vLLM): its
            log-probs then differ from the trainer's, and rollout correction applies.
    """

    group_size: int
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int
    external: bool

    def generate(
        self,
        policy: torch.nn.Module,
        tokenizer,
        prompts: list[list[int]],
        greedy: bool = False,
        seed: int = 0,
        max_new_tokens: int | None = None,
    ) -> RolloutBatch:
        """Sample ``group_size`` completions per prompt (one when ``greedy``), up to ``max_new_tokens``."""
        ...


def concat_rollouts(batches: list[RolloutBatch], pad_id: int) -> RolloutBatch:
    """Stack rollouts of possibly different prompt and completion widths into one batch.

    Prompts are re-padded on the left and completions on the right so the layout invariant holds.
    """
    if len(batches) == 1:
        return batches[0]
    width = max(b.prompt_width for b in batches)
    comp = max(b.completion_mask.shape[1] for b in batches)

    def pad(t: torch.Tensor, left: int, right: int, value: float) -> torch.Tensor:
        return torch.nn.functional.pad(t, (left, right), value=value)

    parts = {"input_ids": [], "attention_mask": [], "completion_mask": [], "behaviour_logp": []}
    for b in batches:
        left, right = width - b.prompt_width, comp - b.completion_mask.shape[1]
        prompt, completion = b.input_ids[:, : b.prompt_width], b.input_ids[:, b.prompt_width :]
        parts["input_ids"].append(
            torch.cat([pad(prompt, left, 0, pad_id), pad(completion, 0, right, pad_id)], 1)
        )
        parts["attention_mask"].append(pad(b.attention_mask, left, right, 0))  # [n, P + C]
        parts["completion_mask"].append(pad(b.completion_mask, 0, right, 0))  # [n, C]
        parts["behaviour_logp"].append(pad(b.behaviour_logp, 0, right, 0.0))  # [n, C]
    return RolloutBatch(
        **{k: torch.cat(v, 0) for k, v in parts.items()},
        completions=[c for b in batches for c in b.completions],
        prompt_width=width,
        group_size=batches[0].group_size,
    )
