"""Test-only components for the scale-out tests (referenced by ``_target_`` from config overrides).

``PerPromptRollout`` makes rollouts independent of how prompts are split into batches and ranks, so the
union of the ranks' rollouts equals the single-process rollouts exactly; it also ends completions at
varied lengths so ranks hold different token counts (DAPO's token mean must then be global).
``RankShardedData`` deals one seeded permutation out to the ranks (``perm[rank::world]``), so the ranks'
batches of a step together are the single-process batch of that step (run with
``+trainer.use_distributed_sampler=false``). ``RankProbe`` writes what each rank ends with.
``ShiftedRollout`` fakes an engine/trainer mismatch for the TIS tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from longact_pl.data.datamodule import LongContextDataModule
from longact_pl.data.dataset import keep_list
from longact_pl.distributed import data_parallel_rank
from longact_pl.gather import full_state_dict
from longact_pl.masking import SaliencyMask
from longact_pl.rollout.hf import HFRollout
from longact_pl.rollout.types import RolloutBatch, concat_rollouts
from longact_pl.rollout.vllm import prompt_seed
from tests.helpers import ROOT, child_env


def train_cli(run_dir: Path, *overrides: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run ``train.py`` in a subprocess (Lightning re-launches it once per extra rank); fail on an error.

    The run is its own process group: on a timeout every rank is killed, not only the first (the others
    would keep running, and keep the pipes read here open, so the test would hang instead of failing).
    """
    cmd = [sys.executable, "train.py", f"hydra.run.dir={run_dir}", *overrides]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"train.py gave no result in {timeout} s; its ranks were killed:\n{out[-2000:]}"
                             f"\n{err[-2000:]}") from None  # fmt: skip
    except BaseException:  # the test interrupted: no rank outlives it
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    # -9: Lightning's launcher killed rank 0 because another rank had exited non-zero
    assert proc.returncode == 0, f"train.py exit code {proc.returncode}:\n{out[-2000:]}\n{err[-2000:]}"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


class PerPromptRollout(HFRollout):
    """``HFRollout`` on one prompt at a time, seeded by its tokens; completions cut at random lengths."""

    def generate(self, policy, tokenizer, prompts, greedy=False, seed=0, max_new_tokens=None) -> RolloutBatch:
        parts = []
        for prompt in prompts:
            s = prompt_seed(seed, prompt)
            ro = super().generate(policy, tokenizer, [prompt], greedy, s, max_new_tokens)
            parts.append(ro if greedy else _cut(ro, tokenizer, s))
        return concat_rollouts(parts, tokenizer.pad_token_id)


def _cut(ro: RolloutBatch, tokenizer, seed: int) -> RolloutBatch:
    """End row ``i`` after a seeded random number of tokens in ``[1, C]`` (as if it had emitted EOS there)."""
    n, width = ro.completion_mask.shape
    keep = torch.randint(1, width + 1, (n, 1), generator=torch.Generator().manual_seed(seed))  # [n, 1]
    mask = ro.completion_mask * (torch.arange(width).unsqueeze(0) < keep).long()  # [n, C]
    completion = torch.where(
        mask.bool(), ro.input_ids[:, ro.prompt_width :], tokenizer.pad_token_id
    )  # [n, C]
    return RolloutBatch(
        input_ids=torch.cat([ro.input_ids[:, : ro.prompt_width], completion], 1),
        attention_mask=torch.cat([ro.attention_mask[:, : ro.prompt_width], mask], 1),
        completion_mask=mask,
        behaviour_logp=ro.behaviour_logp * mask,
        completions=tokenizer.batch_decode(completion, skip_special_tokens=True),
        prompt_width=ro.prompt_width,
        group_size=ro.group_size,
    )


class RankShardedData(LongContextDataModule):
    """Training batches ``perm(seed)[rank::world]`` in order: one step's rank batches = one global batch.

    ``rank`` and ``world`` count data-parallel ranks: the ranks of a sequence-parallel group get one slice.
    """

    def train_dataloader(self) -> DataLoader:
        data = self._dataset(self.train)
        perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(self.seed)).tolist()
        rank, world = data_parallel_rank(self.trainer)  # a sequence-parallel group shares one slice
        return DataLoader(data, batch_size=self.batch_size, sampler=perm[rank::world], collate_fn=keep_list)


class RankProbe(pl.Callback):
    """Save ``rank<r>.pt`` at the end of fit: full weights, LongAct masks, prompt indices per step, and the
    dtypes the first MLP's weight had in training forwards (FSDP2 gathers it in its ``param_dtype``)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.prompts: list[list[int]] = []  # sample indices of each training batch
        self.forward_dtypes: set[torch.dtype] = set()

    def on_train_start(self, trainer, pl_module) -> None:
        mlp = pl_module.policy.model.layers[0].mlp.down_proj
        mlp.register_forward_pre_hook(lambda module, args: self.forward_dtypes.add(module.weight.dtype))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.prompts.append([int(s["index"]) for s in batch])

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        weights = full_state_dict(pl_module.policy)  # a collective under FSDP: every rank calls it
        masks = next((c.masks for c in trainer.callbacks if isinstance(c, SaliencyMask)), {})
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "weights": weights,
                "masks": masks,
                "prompts": self.prompts,
                "world_size": trainer.world_size,
                "step": trainer.global_step,
                "forward_dtypes": self.forward_dtypes,
            },
            self.out_dir / f"rank{trainer.global_rank}.pt",
        )


class ShiftedRollout(HFRollout):
    """HF rollouts with behaviour log-probs shifted by ``shift``: an external engine off by exp(shift)."""

    # treated like vLLM: rollout correction and its metrics apply
    external = True

    def __init__(self, shift: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.shift = shift

    def generate(self, *args, **kwargs) -> RolloutBatch:
        ro = super().generate(*args, **kwargs)
        ro.behaviour_logp = (ro.behaviour_logp + self.shift) * ro.completion_mask
        return ro


class ExternalPerPromptRollout(PerPromptRollout):
    """``PerPromptRollout`` as an external sampler whose log-probs are off by a per-token amount.

    Each completion token's behaviour log-prob is shifted by ``shift * (token_id % 3 - 1)``, so a rollout
    correction (``correction=token_tis``) weighs tokens differently, the same way in every process layout.
    """

    external = True

    def __init__(self, shift: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.shift = shift

    def generate(self, *args, **kwargs) -> RolloutBatch:
        ro = super().generate(*args, **kwargs)
        ids = ro.input_ids[:, ro.prompt_width :]  # [N, C]
        ro.behaviour_logp = (ro.behaviour_logp + self.shift * (ids % 3 - 1)) * ro.completion_mask
        return ro


class RolloutProbe(RankProbe):
    """``RankProbe`` that also saves each step's rollouts (what the learner trained on) and LongAct masks."""

    def __init__(self, out_dir: str) -> None:
        super().__init__(out_dir)
        self.rollouts: list[torch.Tensor] = []  # [N, P + C] input ids of each step
        self.step_masks: list[dict[str, torch.Tensor]] = []  # the masks each step's update used

    def on_train_start(self, trainer, pl_module) -> None:
        prepare = pl_module.learner.prepare

        def recording(policy, reference, rollouts, *args, **kwargs):
            self.rollouts.append(rollouts.input_ids.detach().cpu().clone())
            return prepare(policy, reference, rollouts, *args, **kwargs)

        pl_module.learner.prepare = recording

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self.step_masks.append(next((c.masks for c in trainer.callbacks if isinstance(c, SaliencyMask)), {}))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        path = self.out_dir / f"rank{trainer.global_rank}.pt"
        torch.save({**torch.load(path), "rollouts": self.rollouts, "step_masks": self.step_masks}, path)
