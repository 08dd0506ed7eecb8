"""fp32 master weights with bf16 compute: the rule for trainable parameters, and FSDP2's policy for it.

AdamW updates parameters in place and keeps no copy of its own. In bf16 (8 bits of mantissa) a weight of
magnitude ``w`` only moves in steps of about ``w / 256``, so an RL update at ``lr = 1e-6`` rounds to nothing
for almost every entry: the run logs losses and rewards but the policy does not change. The policy is
therefore kept in float32 and compute runs in bf16 (``trainer.precision=bf16-mixed``: autocast; under FSDP2
also parameters all-gathered in bf16 and gradients reduce-scattered in fp32, see
:func:`fsdp_mixed_precision`). The frozen reference model and a rollout engine's copy have no such need.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy

LOW_PRECISION = (torch.bfloat16, torch.float16)


def check_master_weights(params: Iterable[nn.Parameter], allow_low_precision: bool = False) -> None:
    """Refuse to train parameters held in bf16/fp16 (AdamW would update them in that precision).

    Args:
        params: The parameters about to be trained (those without ``requires_grad`` are ignored).
        allow_low_precision: Train them anyway (``module.allow_low_precision_weights``).

    Raises:
        ValueError: If a trainable parameter is bf16 or fp16 and ``allow_low_precision`` is off.
    """
    low = sorted(
        {str(p.dtype).removeprefix("torch.") for p in params if p.requires_grad and p.dtype in LOW_PRECISION}
    )
    if low and not allow_low_precision:
        raise ValueError(
            f"the policy's trainable parameters are {'/'.join(low)} and AdamW keeps no float32 copy: most "
            "updates at RL learning rates (1e-6) round to nothing and the policy does not train. Set "
            "model.dtype=float32 (fp32 master weights; compute still runs in bf16 with "
            "trainer.precision=bf16-mixed, not bf16-true), or module.allow_low_precision_weights=true to "
            "train low-precision weights anyway."
        )


def fsdp_mixed_precision(precision: str) -> MixedPrecisionPolicy:
    """FSDP2's policy for a Lightning ``trainer.precision`` value.

    ``bf16-mixed``: parameters all-gathered and used in bf16 (half the all-gather traffic and gathered-layer
    memory of fp32), gradients reduce-scattered in fp32 into the fp32 sharded master weights. Anything else:
    FSDP2's default (compute and communication in the parameters' own dtype).
    """
    if precision == "bf16-mixed":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()
