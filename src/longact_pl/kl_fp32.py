"""How much of the logged KL is bf16 rounding: the same step's KL recomputed in fp32 on a few rows.

Under ``trainer.precision=bf16-mixed`` the policy and the reference both run on bf16 copies of their fp32
weights. One AdamW step at an RL learning rate (2e-6) moves a weight by far less than a bf16 rounding step
(``|w| / 256``), but the few weights that cross a rounding boundary flip by a whole bf16 step, and
``train/kl`` reads those flips as policy change: on SmolLM2 it read 4.8e-2 after one step where an fp32 run
read 5.7e-4. With ``module.kl_fp32_check_rows=N`` (off by default) every step recomputes, before the update
and on the first N rows of its rollouts, the policy's and the reference's log-probs with autocast off (fp32),
and logs

* ``train/kl_fp32``: the KL of those rows in fp32;
* ``train/kl_autocast``: the KL of the same rows at the run's precision (the policy's log-probs from a no-grad
  pass, the reference's from the step's own reference pass), i.e. what ``train/kl`` reads on them.

``1 - kl_fp32 / kl_autocast`` is the share of the logged KL that is precision noise. Weighting: both are token
means over the checked rows, summed over data-parallel ranks (every rank checks its own first N rows), so they
are global values already. Both evaluate the estimator in float64 (see :meth:`Fp32KLCheck._token_kl`).
"""

from __future__ import annotations

import torch
from torch import nn

from longact_pl.algos.kl import KL_ESTIMATORS
from longact_pl.distributed import DistOps
from longact_pl.learner import Learner, TrainBatch
from longact_pl.metric_reduce import Metric


def check_kl_fp32_setting(rows: int, precision: str, sharded: bool) -> None:
    """Refuse a check that could not run in fp32, before a model is loaded.

    Args:
        rows: ``module.kl_fp32_check_rows``.
        precision: The resolved ``trainer.precision``.
        sharded: The strategy is FSDP2 (``strategy=fsdp``).

    Raises:
        ValueError: For negative ``rows``, or ``rows > 0`` under FSDP2 with a mixed precision: FSDP2 gathers
            parameters in bf16 whatever autocast says, so the "fp32" KL would be bf16 too.
    """
    if rows < 0:
        raise ValueError(f"module.kl_fp32_check_rows must be >= 0 (0 = off), got {rows}")
    if rows and sharded and precision != "32-true" and "mixed" in str(precision):
        raise ValueError(
            f"module.kl_fp32_check_rows={rows} with strategy=fsdp and trainer.precision={precision}: FSDP2 "
            "gathers the parameters in bf16, so the check cannot run in fp32. Measure it with strategy=ddp "
            "or strategy=single, or set module.kl_fp32_check_rows=0"
        )


class Fp32KLCheck:
    """``train/kl_fp32`` and ``train/kl_autocast`` of one step (see the module docstring).

    Args:
        rows: Rows checked per step and rank (the first ones of the rollout batch).
        estimator: The KL estimator of the loss (``algo.kl_estimator``: ``k1``, ``k2``, ``k3``,
            ``low_var_kl``).

    Raises:
        ValueError: For ``rows < 1`` or an unknown estimator.
    """

    def __init__(self, rows: int, estimator: str = "k3") -> None:
        if rows < 1:
            raise ValueError(f"module.kl_fp32_check_rows must be >= 0 (0 = off), got {rows}")
        if estimator not in KL_ESTIMATORS:
            raise ValueError(f"algo.kl_estimator must be one of {sorted(KL_ESTIMATORS)}, got {estimator!r}")
        self.rows, self.estimator = rows, estimator

    @torch.no_grad()
    def __call__(
        self, learner: Learner, policy: nn.Module, reference: nn.Module, batch: TrainBatch, dist: DistOps
    ) -> dict[str, float]:
        """Both KLs of the step's first rows, before the update (every rank calls it: it runs collectives).

        Args:
            learner: Its log-prob pass (the one the training and reference passes use).
            policy: The policy before this step's update.
            reference: The frozen reference model.
            batch: The step's batch, with the reference log-probs of the run's precision.
            dist: Data-parallel collectives (lock-step passes, the global sums).
        """
        ro = batch.rollouts
        if batch.ref_logp is None:
            raise ValueError("module.kl_fp32_check_rows needs the reference pass (algo.kl_coef > 0)")
        rows = torch.arange(min(self.rows, ro.completion_mask.shape[0]))  # [n]
        mask = ro.completion_mask[rows].float()  # [n, C]
        policy_low = self._logprobs(learner, policy, batch, rows, dist)  # [n, C], the run's precision
        device = next(policy.parameters()).device.type
        with torch.autocast(device_type=device, enabled=False):
            policy_32 = self._logprobs(learner, policy, batch, rows, dist)  # [n, C]
            ref_32 = self._logprobs(learner, reference, batch, rows, dist)  # [n, C]
        keep = mask.bool().to(policy_low.device)  # [n, C]
        ref_low = batch.ref_logp[rows].to(policy_low.device)  # [n, C]
        low = self._token_kl(policy_low, ref_low, keep)  # [n, C], 0 at padding
        full = self._token_kl(policy_32, ref_32.to(policy_32.device), keep.to(policy_32.device))  # [n, C]
        sums = torch.stack([low.sum().cpu(), full.sum().cpu(), mask.sum().cpu()])  # [3]
        sums = dist.sum(sums)  # [3]: token sums over every rank's checked rows
        tokens = sums[2].clamp(min=1.0)
        return {  # already global (summed over ranks above): every rank logs the same value
            "train/kl_autocast": Metric(sums[0] / tokens, "same"),
            "train/kl_fp32": Metric(sums[1] / tokens, "same"),
        }

    def _token_kl(self, logp: torch.Tensor, ref_logp: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``[n, C]`` estimator values at real completion tokens, 0 at padding (whatever it holds).

        In float64: k3's ``exp(d) - d - 1`` cancels in float32 for ``|d| < 1e-3`` (an error near 1e-7 per
        token), which would hide the small fp32 KL this check exists to show.
        """
        kl = KL_ESTIMATORS[self.estimator](logp.double(), ref_logp.double())  # [n, C]
        return torch.where(keep, kl, torch.zeros_like(kl))  # [n, C]

    @staticmethod
    def _logprobs(
        learner: Learner, model: nn.Module, batch: TrainBatch, rows: torch.Tensor, dist: DistOps
    ) -> torch.Tensor:
        """``[n, C]`` log-probs of ``rows``, micro-batches in lock-step (as ``Learner.no_grad_logprobs``)."""
        parts = learner.plan(rows, batch.rollouts, dist)
        return torch.cat([learner.logprobs_of(model, batch.rollouts, p, dist, pad)[0] for p, pad in parts])
