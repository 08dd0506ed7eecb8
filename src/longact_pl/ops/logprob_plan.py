"""Which log-prob path a run takes, chosen once when the model is configured, with the reason.

:func:`plan_logprobs` looks at the model once (before training, before any sharding) and settles:

* ``path``: ``"per_row"`` (every row through the whole model), ``"padded"`` (each group's prompt once, its
  completions padded behind it: :mod:`longact_pl.ops.shared_prefix`) or ``"packed"`` (each group's prompt
  once, every completion of a call packed in one row: :mod:`longact_pl.ops.packed`);
* ``kernel``: the attention kernel the passes run (:func:`attention_kernel`, the one place it is chosen);
* ``chunk_size``: LM-head chunk, or ``None`` for the model's own head;
* ``interleave``: on the shared paths, prompts and completions run layer by layer
  (:mod:`longact_pl.ops.interleaved`): values and gradients bit-identical to the two-pass order, one layer's
  prompt keys/values and their gradients alive at a time instead of every layer's (``docs/memory.md``,
  issue 24 point 5). Always on where the decoder allows it (a ``layers`` list and a final ``norm``); not
  an option, since it changes no number and only removes memory;
* ``packed_kernel``: on the packed path, the attention kernel of the packed completions for the training
  device (:meth:`LogprobPlan.on_device`, once the device is known: FlexAttention or flash-attn varlen on CUDA,
  the dense-mask SDPA path on CPU; :func:`~longact_pl.ops.attention_kernels.choose_kernel`).

What the options ask for and the model cannot do falls back with one warning each (``reason`` records
it); packing asked for with ``pack_completions=true`` on a model that cannot pack is refused here.
Sequence parallelism is not part of the plan: each path has a split variant, chosen by whether the
collectives carry a sequence-parallel group (:mod:`longact_pl.ops.policy_logprobs`). The split variant
(:mod:`longact_pl.ops.sequence_parallel`) keeps the two-pass order whatever ``interleave`` says.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn

from longact_pl.ops.attention_kernels import choose_kernel
from longact_pl.ops.chunked import decoder_of, lm_head_of
from longact_pl.ops.interleaved import can_interleave
from longact_pl.ops.packed import packing_unsupported
from longact_pl.ops.sequence_parallel.attention import inner_implementation
from longact_pl.ops.shared_prefix import check_shared_prefix

log = logging.getLogger(__name__)

Path = Literal["per_row", "padded", "packed"]


@dataclass(frozen=True)
class LogprobPlan:
    """How every log-prob pass of a run is computed (frozen: chosen once, by :func:`plan_logprobs`).

    Attributes:
        path: ``"per_row"``, ``"padded"`` (shared prompt, padded completions) or ``"packed"`` (shared
            prompt, packed completions).
        kernel: Attention kernel of the passes (the model's attention implementation).
        chunk_size: Completion tokens per LM-head chunk (``None``: the head over all of them at once on the
            shared paths, the model's own head on the per-row path).
        entropy_grad: The entropy keeps its gradient where gradients are on (the entropy bonus).
        reason: Why this path (and any fallback), in words.
        packed_kernel: The packed completions' attention kernel for the training device, run by the
            single-process and the sequence-parallel packed pass alike (``None``: not chosen yet, or not the
            packed path; the packed pass then chooses it for the tensors' device).
        interleave: The shared paths run prompts and completions layer by layer (see the module docstring;
            ignored on the per-row path and under sequence parallelism).
    """

    path: Path
    kernel: str
    chunk_size: int | None = None
    entropy_grad: bool = False
    reason: str = ""
    packed_kernel: str | None = None
    interleave: bool = True

    def on_device(self, device: torch.device | str) -> LogprobPlan:
        """The plan with the packed kernel chosen for the training ``device`` (unchanged off the packed path).

        Called once, when the model is configured on its device (``LongActModule.configure_model``).
        """
        if not self.pack:
            return self
        kernel, why = choose_kernel(self.kernel, device)
        return replace(self, packed_kernel=kernel, reason=f"{self.reason}; packed kernel {kernel}: {why}")

    @property
    def shared(self) -> bool:
        """Each group's prompt runs once (``padded`` or ``packed``)."""
        return self.path != "per_row"

    @property
    def pack(self) -> bool:
        """Completions run packed in one row."""
        return self.path == "packed"

    def passes(self, row_groups: torch.Tensor) -> int:
        """Prompt passes (spans) a call on rows with these group indices runs: its lock-step unit count.

        The per-row path runs one forward for any non-empty call; see
        :func:`~longact_pl.ops.shared_prefix.group_spans`.
        """
        if len(row_groups) == 0:
            return 0
        if not self.shared:
            return 1
        return 1 + int((row_groups[1:] != row_groups[:-1]).sum())


def attention_kernel(model: nn.Module) -> str:
    """The attention kernel the log-prob passes run ``model`` with (the one place a kernel is chosen).

    Today the model's own attention implementation (``sdpa`` under sequence parallelism's wrapper).
    """
    return inner_implementation(model)


def check_options(shared_prefix: bool, chunk_size: int | None, pack_completions: bool | str) -> None:
    """Refuse option values no model can take.

    Raises:
        ValueError: For a chunk below 1, a ``pack_completions`` that is not a bool or ``"auto"``, or packing
            required without the shared prefix.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"module.logprobs.chunk_size must be >= 1 or null, got {chunk_size}")
    if pack_completions not in (True, False, "auto"):
        raise ValueError(
            f"module.logprobs.pack_completions must be true, false or auto, got {pack_completions!r}"
        )
    if pack_completions is True and not shared_prefix:
        raise ValueError(
            "module.logprobs.pack_completions=true packs completions behind a shared prompt: it needs "
            "module.logprobs.shared_prefix=true (or set module.logprobs.pack_completions=auto/false)"
        )


def plan_logprobs(
    model: nn.Module,
    shared_prefix: bool = True,
    chunk_size: int | None = None,
    pack_completions: bool | str = False,
    entropy_grad: bool = False,
) -> LogprobPlan:
    """Choose the log-prob path for ``model`` from the options (warns once per fallback).

    Args:
        model: The policy (before sharding; the reference model has the same architecture).
        shared_prefix: Compute each shared prompt once where the model allows it.
        chunk_size: Completion tokens per LM-head chunk (``None``: one chunk).
        pack_completions: ``True``: pack the completions (refused if the model cannot); ``"auto"``: pack
            where the model can, else pad them; ``False``: pad them.
        entropy_grad: See :attr:`LogprobPlan.entropy_grad`.

    Raises:
        ValueError: For invalid options (:func:`check_options`), or ``pack_completions=true`` on a model
            that cannot pack.
    """
    check_options(shared_prefix, chunk_size, pack_completions)
    kernel = attention_kernel(model)
    reasons: list[str] = []
    shared = shared_prefix
    if not shared_prefix:
        reasons.append("module.logprobs.shared_prefix is off")
    else:
        try:
            check_shared_prefix(model)
        except NotImplementedError as err:
            log.warning("module.logprobs.shared_prefix: %s; computing log-probs one row at a time", err)
            reasons.append(f"the shared prompt is unavailable ({err})")
            shared = False
    why_not_pack = packing_unsupported(model) if shared else reasons[-1]
    if pack_completions is True and why_not_pack is not None:
        raise ValueError(
            f"module.logprobs.pack_completions=true, but this model cannot pack completions: {why_not_pack}; "
            "set module.logprobs.pack_completions=auto (padded completions where packing is unavailable) or "
            "false"
        )
    pack = bool(pack_completions) and shared and why_not_pack is None
    if shared and bool(pack_completions) and why_not_pack is not None:
        log.warning("module.logprobs.pack_completions: %s; completions are padded", why_not_pack)
        reasons.append(f"completions padded: {why_not_pack}")
    interleave = False
    if shared:
        path: Path = "packed" if pack else "padded"
        reasons.append(
            f"each group's prompt runs once; completions {'packed in one row' if pack else 'padded'} "
            f"(module.logprobs.pack_completions={pack_completions})"
        )
        why_not = can_interleave(decoder_of(model))
        interleave = why_not is None
        reasons.append(
            "prompt and completions layer by layer (one layer's prompt K/V and gradients at a time; "
            "sequence parallelism: two passes)"
            if interleave
            else f"prompt through every layer, then the completions ({why_not})"
        )
    else:
        path = "per_row"
        reasons.append("every row runs through the whole model")
    if not shared and chunk_size is not None:
        try:
            lm_head_of(model)
        except NotImplementedError as err:
            log.warning("chunked LM head unavailable (%s): using the model's own head", err)
            reasons.append(f"the model's own LM head ({err})")
            chunk_size = None
    reason = "; ".join(reasons) + f"; attention {kernel}"
    return LogprobPlan(path, kernel, chunk_size, entropy_grad, reason, interleave=interleave)
