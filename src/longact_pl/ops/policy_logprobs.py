"""The trainer's log-prob pass: one plan, one signature for every path.

:class:`LogprobPass` runs what its :class:`~longact_pl.ops.logprob_plan.LogprobPlan` says, chosen once
when the model is configured (:meth:`LogprobPass.for_model`), for the training, behaviour and reference
passes alike:

* ``per_row``: every row through the whole model (:func:`per_row_pass`), the LM head in chunks of
  ``chunk_size`` completion tokens so ``[N, C, V]`` logits never exist at once
  (:mod:`longact_pl.ops.chunked`);
* ``padded`` / ``packed``: each run of rows that share a prompt (a GRPO group) runs it once, the completions
  padded behind it or packed in one row (:func:`shared_pass`; :mod:`longact_pl.ops.shared_prefix`,
  :mod:`longact_pl.ops.packed`), exact in values and gradients.

Each path has a sequence-parallel variant (:func:`sp_per_row_pass`, :func:`sp_shared_pass`,
:mod:`longact_pl.ops.sequence_parallel`), with the same numbers, taken when the call carries the group
(the learner passes the one its collectives hold, ``DistOps.sequence_parallel``).

Every implementation is a :data:`LogprobFn`: ``(model, call, plan, hook, sp) -> (logp, entropy)``. The fast
paths call the model's parts rather than ``model(...)``; under FSDP2 they run inside the root's forward
hooks (:func:`longact_pl.ops.fsdp_root.through_root`), so sharded models take them too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from longact_pl.ops.chunked import chunked_completion_logprobs
from longact_pl.ops.fsdp_root import through_root
from longact_pl.ops.logprob_plan import LogprobPlan, plan_logprobs
from longact_pl.ops.logprobs import completion_logprobs
from longact_pl.ops.passes import TokenMaskHook, zero_tie
from longact_pl.ops.sequence_parallel.comm import SPGroup
from longact_pl.ops.sequence_parallel.logprobs import sp_completion_logprobs, sp_grouped_completion_logprobs
from longact_pl.ops.shared_prefix import grouped_completion_logprobs

Output = tuple[torch.Tensor, torch.Tensor | None]


@dataclass(frozen=True)
class LogprobCall:
    """What one log-prob pass computes.

    Attributes:
        input_ids: ``[n, P + C]`` left-padded prompts followed by right-padded completions; rows that share
            a prompt should be adjacent (only adjacent rows share the prompt pass).
        attention_mask: ``[n, P + C]``.
        completion_width: C.
        temperature: Sampling temperature of the completions.
        with_entropy: Also return the per-token entropy.
        row_groups: ``[n]`` group index of each row. Given, the shared paths run one prompt pass per run of
            equal indices, so the number of forwards never depends on the prompts' contents (required
            under FSDP, where each forward is a collective). ``None``: runs of equal prompts.
        count_prompts: ``[n]`` bool, shared paths: a span's prompt pass is announced to the hook only if
            one of its rows is set, so a group split over micro-batches counts its prompt once (``None``:
            every span's).
        pad_spans: Lock-step dummies: extra spans of a dummy prompt and completion (shared paths), or one
            dummy forward when ``n == 0`` (per-row path), so that data-parallel ranks run as many forwards as
            the rank with the most (:meth:`LogprobPlan.passes`); outputs discarded, hooks not told.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_width: int
    temperature: float = 1.0
    with_entropy: bool = False
    row_groups: torch.Tensor | None = None
    count_prompts: torch.Tensor | None = None
    pad_spans: int = 0


# (model, call, plan, hook told each forward's real-token mask, sequence-parallel group) -> (logp, entropy)
LogprobFn = Callable[[nn.Module, LogprobCall, LogprobPlan, TokenMaskHook | None, SPGroup | None], Output]


def trim_left_padding(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the leading columns that are padding in every row (``[n, T] -> [n, T']``)."""
    first = int(mask.any(0).nonzero()[0]) if mask.any() else 0
    return ids[:, first:], mask[:, first:]


def _whole_rows(model, ids, mask, width, temperature, with_entropy, plan: LogprobPlan) -> Output:
    """``[n, C]`` log-probs of whole rows: chunked head where the plan has a chunk, else the model's own."""
    if plan.chunk_size is None:
        return completion_logprobs(model, ids, mask, width, temperature, with_entropy, plan.entropy_grad)
    return through_root(model, functools.partial(
        chunked_completion_logprobs, model, ids, mask, width, temperature, with_entropy, plan.chunk_size,
        plan.entropy_grad,
    ))  # fmt: skip


def _dummy(model: nn.Module, call: LogprobCall, plan: LogprobPlan) -> Output:
    """No rows: ``[0, C]`` log-probs, after one discarded 2-token forward if ``pad_spans`` asks for it."""
    logp = torch.zeros(0, call.completion_width, device=call.input_ids.device)  # [0, C]
    if call.pad_spans > 0:
        ids = call.input_ids.new_zeros(1, 2)  # [1, 2]
        out, _ = _whole_rows(model, ids, torch.ones_like(ids), 1, 1.0, False, plan)  # [1, 1]
        logp = logp + zero_tie([out])
    return logp, (torch.zeros_like(logp) if call.with_entropy else None)


def per_row_pass(
    model: nn.Module, call: LogprobCall, plan: LogprobPlan, hook: TokenMaskHook | None, sp: SPGroup | None
) -> Output:
    """Every row through the whole model (left padding common to all rows trimmed first)."""
    if len(call.input_ids) == 0:
        return _dummy(model, call, plan)
    ids, mask = trim_left_padding(call.input_ids, call.attention_mask)  # [n, P' + C]
    if hook is not None:
        hook(mask.bool())
    try:
        return _whole_rows(model, ids, mask, call.completion_width, call.temperature, call.with_entropy, plan)
    finally:
        if hook is not None:
            hook(None)


def sp_per_row_pass(
    model: nn.Module, call: LogprobCall, plan: LogprobPlan, hook: TokenMaskHook | None, sp: SPGroup | None
) -> Output:
    """:func:`per_row_pass` with each row split along the sequence over ``sp``."""
    assert sp is not None
    if len(call.input_ids) == 0:
        return _dummy(model, call, plan)
    ids, mask = trim_left_padding(call.input_ids, call.attention_mask)  # [n, P' + C]
    return through_root(model, functools.partial(
        sp_completion_logprobs, model, ids, mask, call.completion_width, sp, call.temperature,
        call.with_entropy, plan.chunk_size, hook, plan.entropy_grad,
    ))  # fmt: skip


def shared_pass(
    model: nn.Module, call: LogprobCall, plan: LogprobPlan, hook: TokenMaskHook | None, sp: SPGroup | None
) -> Output:
    """Each group's prompt once, its completions padded or packed (``plan.pack``) behind it."""
    return through_root(model, functools.partial(
        grouped_completion_logprobs, model, call.input_ids, call.attention_mask, call.completion_width, None,
        call.temperature, call.with_entropy, plan.chunk_size, token_mask_hook=hook,
        row_groups=call.row_groups, pack=plan.pack, pad_spans=call.pad_spans, entropy_grad=plan.entropy_grad,
        count_prompts=call.count_prompts, kernel=plan.packed_kernel, interleave=plan.interleave,
    ))  # fmt: skip


def sp_shared_pass(
    model: nn.Module, call: LogprobCall, plan: LogprobPlan, hook: TokenMaskHook | None, sp: SPGroup | None
) -> Output:
    """:func:`shared_pass` with prompts and completions split along the sequence over ``sp``."""
    assert sp is not None
    return through_root(model, functools.partial(
        sp_grouped_completion_logprobs, model, call.input_ids, call.attention_mask, call.completion_width, sp,
        call.temperature, call.with_entropy, plan.chunk_size, hook, call.row_groups, pack=plan.pack,
        pad_spans=call.pad_spans, entropy_grad=plan.entropy_grad, count_prompts=call.count_prompts,
        kernel=plan.packed_kernel,
    ))  # fmt: skip


# path -> (implementation, its sequence-parallel variant)
IMPLEMENTATIONS: dict[str, tuple[LogprobFn, LogprobFn]] = {
    "per_row": (per_row_pass, sp_per_row_pass),
    "padded": (shared_pass, sp_shared_pass),
    "packed": (shared_pass, sp_shared_pass),
}


class LogprobPass:
    """Per-token completion log-probs (and entropy) of rollouts under a model, as ``plan`` says.

    Args:
        plan: The path, chosen once for the run's model (see :meth:`for_model`).

    Attributes:
        plan: The frozen plan (its ``reason`` says why this path).
    """

    def __init__(self, plan: LogprobPlan) -> None:
        self.plan = plan
        self._local, self._split = IMPLEMENTATIONS[plan.path]

    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        shared_prefix: bool = True,
        chunk_size: int | None = None,
        pack_completions: bool | str = False,
        entropy_grad: bool = False,
    ) -> LogprobPass:
        """The pass :func:`~longact_pl.ops.logprob_plan.plan_logprobs` plans for ``model`` (see there).

        Raises:
            ValueError: For invalid options, or packing required on a model that cannot pack.
        """
        return cls(plan_logprobs(model, shared_prefix, chunk_size, pack_completions, entropy_grad))

    def on_device(self, device: torch.device | str) -> LogprobPass:
        """The pass with the packed kernel chosen for the training ``device`` (``LogprobPlan.on_device``)."""
        return LogprobPass(self.plan.on_device(device))

    def __call__(
        self,
        model: nn.Module,
        call: LogprobCall,
        hook: TokenMaskHook | None = None,
        sp: SPGroup | None = None,
    ) -> Output:
        """Log-probs ``[n, C]`` (float32 on the shared paths) and entropy ``[n, C]`` or ``None``.

        Args:
            model: A Hugging Face causal LM (switched to Ulysses attention when ``sp`` is given).
            call: The rows and what to compute.
            hook: Called with the valid-token mask ``[b, t]`` of each forward's input before it runs and with
                ``None`` after (LongAct's statistics count each real token once).
            sp: The sequence-parallel group whose ranks split every sequence (``None``: off).
        """
        run = self._local if sp is None else self._split
        return run(model, call, self.plan, hook, sp)
