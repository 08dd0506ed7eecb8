"""A minimal stand-in for the trainer's LightningModule/DataModule that follows the masking contract."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from longact_pl.learner_hooks import LearnerHook, LearnerHooks


class StubLearner:
    """What ``SaliencyMask`` needs of the learner: a place to register its hook (the stub calls the hooks)."""

    def __init__(self) -> None:
        self.hooks = LearnerHooks()

    def add_hook(self, hook: LearnerHook) -> None:
        self.hooks.add(hook)

    def remove_hook(self, hook: LearnerHook) -> None:
        self.hooks.remove(hook)


class StubModule(pl.LightningModule):
    """Manual optimization: micro-batch forwards + manual_backward, the learner hooks' gradient transform,
    clip in on_before_optimizer_step, step (the learner's order)."""

    def __init__(
        self,
        policy,
        lr=1e-2,
        weight_decay=0.1,
        micro=2,
        clip=1.0,
        export_dir: Path | None = None,
        record_from=0,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.policy = policy
        self.lr, self.weight_decay, self.micro, self.clip = lr, weight_decay, micro, clip
        self.learner = StubLearner()
        self.export_dir = export_dir
        self.steps: list[dict] = []  # per optimizer step: grads/weights seen by the module, and the mask
        self.record_from = record_from  # first optimizer step (0-based) recorded in `steps`

    def training_step(self, batch, batch_idx):
        ids, attn = batch  # [B, T], [B, T]
        opt = self.optimizers()
        hooks = self.learner.hooks
        for mids, mattn in zip(ids.split(self.micro), attn.split(self.micro)):
            hooks.on_forward(mattn.bool())
            logits = self.policy(input_ids=mids, attention_mask=mattn, use_cache=False).logits  # [b, T, V]
            hooks.on_forward(None)
            self.policy(input_ids=mids[:, :3], use_cache=False)  # other shape: must not count
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), mids[:, 1:].flatten(), reduction="none")
            loss = (loss * mattn[:, 1:].flatten()).sum() / mattn[:, 1:].sum()
            self.manual_backward(loss)
        hooks.transform_grads(list(self.policy.parameters()))
        opt.step()
        hooks.after_step()
        opt.zero_grad()

    def on_before_optimizer_step(self, optimizer):
        self.clip_gradients(optimizer, gradient_clip_val=self.clip, gradient_clip_algorithm="norm")
        if self.global_step < self.record_from:
            return
        cb = next(c for c in self.trainer.callbacks if hasattr(c, "masks"))
        self.steps.append(
            {
                "masks": cb.masks,
                "grads": {n: p.grad.clone() for n, p in self.policy.named_parameters() if p.grad is not None},
                "before": {n: p.detach().clone() for n, p in self.policy.named_parameters()},
            }
        )

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.global_step <= self.record_from:
            return
        self.steps[-1]["after"] = {n: p.detach().clone() for n, p in self.policy.named_parameters()}

    def configure_optimizers(self):
        return torch.optim.AdamW(self.policy.parameters(), lr=self.lr, weight_decay=self.weight_decay)


class StubData(pl.LightningDataModule):
    """Left-padded random token batches; calibration prompts drawn from a different token range."""

    def __init__(self, vocab: int, batches: int = 8, batch_size: int = 4, seq: int = 24, calib_len: int = 40):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, min(vocab, 200), (batches * batch_size, seq), generator=g)  # [N, T]
        self.attn = torch.ones_like(self.ids)  # [N, T]
        self.attn[::2, :5] = 0  # left padding on every other row
        self.batch_size, self.vocab, self.calib_len = batch_size, vocab, calib_len
        self.calls = 0

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.ids, self.attn), batch_size=self.batch_size, shuffle=False)

    def calibration_prompts(self, n: int) -> list[list[int]]:
        self.calls += 1
        g = torch.Generator().manual_seed(1)
        low = min(1000, self.vocab // 2)  # another token range than training
        return [torch.randint(low, self.vocab, (self.calib_len,), generator=g).tolist() for _ in range(n)]


def fit(module, data, callbacks, max_steps, ckpt_path=None, **kw) -> pl.Trainer:
    """Run a quiet CPU Trainer."""
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kw,
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return trainer


class NaNInFrozenRow(pl.Callback):
    """Puts a NaN into the gradient of one frozen row of ``module`` in every backward (a ``_target_``)."""

    def __init__(self, module: str = "model.layers.0.self_attn.q_proj") -> None:
        self.module, self.row = module, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.row is not None:
            return
        masks = next(c for c in trainer.callbacks if hasattr(c, "masks")).masks
        self.row = int((~masks[self.module]).nonzero()[0])
        weight = pl_module.policy.get_submodule(self.module).weight
        weight.register_hook(lambda g: g.index_fill(0, torch.tensor([self.row]), float("nan")))
