"""Write the gradient each optimizer step applies, and the LongAct masks it was applied under.

Chosen from the command line, e.g. ``+callbacks.grad_dump._target_=longact_pl.diagnostics.GradDump
+callbacks.grad_dump.out_dir=/tmp/grads``: after every optimizer step ``out_dir/step<N>.safetensors`` holds
``grad/<parameter name>`` (the full tensor, gathered from FSDP2 shards) and ``mask/<module name>`` (uint8
row masks). The gradient is read in a post-step hook of the optimizer, i.e. after the learner accumulated
it, ``SaliencyMask`` masked it and the module clipped it: exactly what AdamW consumed. Every rank takes part
in the gathers (collectives), global rank 0 alone writes. Used by the parity matrix (docs/parity.md).
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from safetensors.torch import save_file

from longact_pl.gather import full_tensor
from longact_pl.masking import SaliencyMask


class GradDump(pl.Callback):
    """Save the applied gradient and masks of every optimizer step (rank 0 writes).

    Args:
        out_dir: Folder for ``step<N>.safetensors`` (N = 1, 2, ... counts optimizer steps).
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self._steps = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Hook the torch optimizer: its post-step hooks run after masking, clipping and the update."""
        masks = [c for c in trainer.callbacks if isinstance(c, SaliencyMask)]

        def dump(optimizer, args, kwargs) -> None:
            self._steps += 1
            policy = pl_module.policy
            tensors = {
                f"grad/{name}": full_tensor(p.grad.detach()).float().cpu().contiguous()
                for name, p in policy.named_parameters()
                if p.grad is not None
            }  # gathered on every rank (a collective per parameter under FSDP2)
            for callback in masks:
                for name, mask in callback.masks.items():
                    tensors[f"mask/{name}"] = mask.to(torch.uint8).cpu().contiguous()  # full on every rank
            if trainer.is_global_zero:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                save_file(tensors, str(self.out_dir / f"step{self._steps}.safetensors"))

        for optimizer in trainer.optimizers:
            optimizer.register_step_post_hook(dump)
