from types import SimpleNamespace

import torch

from longact_pl.eval.heldout import HeldOutValidation
from longact_pl.module import LongActModule
from longact_pl.rollout.types import RolloutBatch


class _EchoEngine:
    """Greedy 'completion' = the prompt's first token as text."""

    def generate(self, policy, tokenizer, prompts, greedy=False, seed=0, max_new_tokens=None):
        n = len(prompts)
        ids = torch.tensor([[p[0], 7] for p in prompts])  # [n, 2]
        ones = torch.ones(n, 1, dtype=torch.long)
        return RolloutBatch(
            input_ids=ids, attention_mask=torch.ones_like(ids), completion_mask=ones,
            behaviour_logp=torch.zeros(n, 1), completions=[str(p[0]) for p in prompts], prompt_width=1,
            group_size=1,
        )  # fmt: skip


def test_validation_ignores_a_ranks_padding_record():
    """A padding record (a rank's short share topped up under FSDP) is generated but never scored."""
    module = SimpleNamespace(
        rollout=_EchoEngine(), policy=None, tokenizer=None, reward_errors=None, global_step=0,
        reward_fn=lambda completions, refs, **meta: [float(c in r) for c, r in zip(completions, refs)],
        validation=HeldOutValidation(max_new_tokens=4),
    )  # fmt: skip
    right = {"prompt_ids": [1], "references": ["1"], "task": "t"}
    wrong = {"prompt_ids": [2], "references": ["9"], "task": "t"}
    LongActModule.validation_step(module, [right, wrong, {**right, "padding": True}], 0)
    assert module.validation.overall.compute().item() == 0.5  # 2/3 if the padding copy were scored
