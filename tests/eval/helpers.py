"""Test-only pieces for the eval tests (referenced by ``_target_`` from overrides)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from tests.helpers import CONF, ROOT

FIXTURE = ROOT / "tests" / "fixtures" / "longbench_v2_sample.jsonl"


class OddLength:
    """Score 1 for completions of odd character length: a random tiny model gets mixed scores."""

    def __call__(self, completions: list[str], references: list[list[str]], **meta) -> list[float]:
        return [float(len(c) % 2) for c in completions]


def compose_eval(output_dir: Path, *overrides: str) -> DictConfig:
    """Compose ``conf/eval.yaml`` as ``evaluate.py`` would (tiny model, no progress bar)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "eval",
            overrides=[f"paths.output_dir={output_dir}", "model=tiny_llama", "progress=false", *overrides],
        )


class ScriptedRollout:
    """A rollout engine that answers from a script instead of a model (engine choice is a ``_target_``).

    The answer call (its prompt asks for "The correct answer is") gets ``answer``; any other call (the CoT
    reasoning call) gets ``reasoning``. Every prompt it saw is kept in ``seen`` (decoded).

    Args:
        answer: Completion of answer calls.
        reasoning: Completion of other calls.
        group_size: Completions per prompt when not greedy.
        **ignored: The HF engine's other settings (``conf/rollout/hf.yaml``), unused.
    """

    seen: list[str] = []

    def __init__(
        self,
        answer: str = "**The correct answer is (A)**",
        reasoning: str = "Step one.",
        group_size: int = 2,
        **ignored,
    ):
        self.answer, self.reasoning = answer, reasoning
        self.group_size, self.temperature, self.max_new_tokens = group_size, 1.0, 8
        ScriptedRollout.seen = []

    def generate(self, policy, tokenizer, prompts, greedy=False, seed=0, max_new_tokens=None):
        import torch

        from longact_pl.rollout.types import RolloutBatch

        g = 1 if greedy else self.group_size
        texts = []
        for ids in prompts:
            text = tokenizer.decode(ids)
            ScriptedRollout.seen.append(text)
            is_answer = "Based on the above" in text or "think step by step" not in text
            texts += [self.answer if is_answer else self.reasoning] * g
        n = len(texts)
        ones = torch.ones(n, 1, dtype=torch.long)
        return RolloutBatch(
            input_ids=ones,
            attention_mask=ones,
            completion_mask=ones,
            behaviour_logp=torch.zeros(n, 1),
            completions=texts,
            prompt_width=0,
            group_size=g,
        )
