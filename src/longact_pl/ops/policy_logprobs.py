"""The trainer's log-prob pass: shared prompt per group where the model allows it, else one row at a time.

One object decides, for the training, behaviour and reference passes alike, how completion log-probs are
computed:

* ``shared_prefix``: :func:`longact_pl.ops.shared_prefix.grouped_completion_logprobs` runs the prompt once
  per run of rows that share it (a GRPO group when rows are ordered group by group), exact in values and
  gradients. Models it does not cover (sliding-window or hybrid attention, soft-capped heads) fall back to
  the per-row path, with one warning.
* ``pack_completions``: on the shared path, the completions of a call run packed in one row without
  padding, each on its own group's prompt key/values (:mod:`longact_pl.ops.packed`), exact as well; models
  whose attention implementation it does not cover take the padded completion pass, with one warning.
* ``chunk_size``: the LM head runs over chunks of completion tokens, so ``[N, C, V]`` logits never exist
  at once (:mod:`longact_pl.ops.chunked`).

Both fast paths call the model's parts rather than ``model(...)``; under FSDP2 they run inside the root's
forward hooks (:func:`longact_pl.ops.fsdp_root.through_root`), so sharded models take them too.

With a sequence-parallel group (``sequence_parallel``, set by ``LongActFSDP``), the shared-prompt path
(padded or packed) and the per-row path run split along the sequence over the group
(:mod:`longact_pl.ops.sequence_parallel`), with the same numbers.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import nn

from longact_pl.ops.chunked import chunked_completion_logprobs, lm_head_of
from longact_pl.ops.fsdp_root import through_root
from longact_pl.ops.logprobs import completion_logprobs
from longact_pl.ops.packed import packing_unsupported
from longact_pl.ops.passes import TokenMaskHook, zero_tie
from longact_pl.ops.sequence_parallel.comm import SPGroup
from longact_pl.ops.sequence_parallel.logprobs import sp_completion_logprobs, sp_grouped_completion_logprobs
from longact_pl.ops.shared_prefix import check_shared_prefix, grouped_completion_logprobs

log = logging.getLogger(__name__)


def trim_left_padding(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the leading columns that are padding in every row (``[n, T] -> [n, T']``)."""
    first = int(mask.any(0).nonzero()[0]) if mask.any() else 0
    return ids[:, first:], mask[:, first:]


class LogprobPass:
    """Per-token completion log-probs (and entropy) of rollouts under a model.

    Args:
        shared_prefix: Compute each shared prompt once (exact); falls back to the per-row path, with one
            warning, where unsupported.
        chunk_size: Completion tokens per LM-head chunk (``None``: the head over all of them at once).
        pack_completions: On the shared path, run a call's completions packed in one row without padding
            (:mod:`longact_pl.ops.packed`, exact). ``"auto"``: where the model's attention allows it, else
            the padded pass with one warning; ``True``: required (:meth:`check_model` raises otherwise);
            ``False``: padded.
        entropy_grad: Entropy returned with gradient where gradients are on (the entropy bonus); else a
            detached metric (no extra backward work).

    Attributes:
        sequence_parallel: The sequence-parallel group whose ranks split every sequence (``None``: off); the
            model must be switched to Ulysses attention (``enable_ulysses``).

    Raises:
        ValueError: For a chunk below 1, a ``pack_completions`` that is not a bool or ``"auto"``, or packing
            required without the shared prefix.
    """

    def __init__(
        self,
        shared_prefix: bool = True,
        chunk_size: int | None = None,
        pack_completions: bool | str = False,
        entropy_grad: bool = False,
    ) -> None:
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
        self.shared_prefix = shared_prefix
        self.chunk_size = chunk_size
        self.pack_required = pack_completions is True
        self.pack = bool(pack_completions) and shared_prefix
        self.entropy_grad = entropy_grad
        self._chunked_head = chunk_size is not None
        self.sequence_parallel: SPGroup | None = None

    def check_model(self, model: nn.Module) -> None:
        """Settle which path ``model`` takes before training (falls back with one warning each).

        Raises:
            ValueError: If packing is required (``module.logprobs.pack_completions=true``) and the model
                cannot pack.
        """
        if self.shared_prefix:
            try:
                check_shared_prefix(model)
            except NotImplementedError as err:
                self._fall_back(str(err))
        why = packing_unsupported(model) if self.shared_prefix else "module.logprobs.shared_prefix is off"
        if self.pack_required and why is not None:
            raise ValueError(
                f"module.logprobs.pack_completions=true, but this model cannot pack completions: {why}; set "
                "module.logprobs.pack_completions=auto (padded completions where packing is unavailable) or "
                "false"
            )
        if self.pack and why is not None:
            if self.shared_prefix:  # (a shared-prefix fallback has already warned)
                log.warning("module.logprobs.pack_completions: %s; completions are padded", why)
            self.pack = False

    def passes(self, row_groups: torch.Tensor) -> int:
        """Prompt passes (spans) a call on rows with these group indices runs: its lock-step unit count.

        The per-row path runs one forward for any non-empty call; see :func:`group_spans`.
        """
        if len(row_groups) == 0:
            return 0
        if not self.shared_prefix:
            return 1
        return 1 + int((row_groups[1:] != row_groups[:-1]).sum())

    def __call__(
        self,
        model: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        completion_width: int,
        temperature: float = 1.0,
        with_entropy: bool = False,
        token_mask_hook: TokenMaskHook | None = None,
        row_groups: torch.Tensor | None = None,
        pad_spans: int = 0,
        count_prompts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs ``[n, C]`` (float32 on the shared path) and entropy ``[n, C]`` or ``None``.

        Args:
            model: A Hugging Face causal LM.
            input_ids: ``[n, P + C]`` left-padded prompts followed by right-padded completions; rows that
                share a prompt should be adjacent (only adjacent rows share the prompt pass).
            attention_mask: ``[n, P + C]``.
            completion_width: C.
            temperature: Sampling temperature of the completions.
            with_entropy: Also return the per-token entropy.
            token_mask_hook: Called with the valid-token mask ``[b, t]`` of each forward's input before
                it runs and with ``None`` after (saliency statistics count each real token once).
            row_groups: ``[n]`` group index of each row. Given, the shared path runs one prompt pass per
                run of equal indices, so the number of forwards never depends on the prompts' contents
                (required under FSDP, where each forward is a collective). ``None``: runs of equal prompts.
            pad_spans: Lock-step dummies: extra spans of a dummy prompt and completion (shared path), or
                one dummy forward when ``n == 0`` (per-row path), so that data-parallel ranks run as many
                forwards as the rank with the most (:meth:`passes`); outputs discarded, hooks not told.
            count_prompts: ``[n]`` bool, shared path: a span's prompt pass is told to ``token_mask_hook``
                only if one of its rows is set, so a group split over micro-batches counts its prompt once
                (``None``: every span's).
        """
        if self.shared_prefix:
            self.check_model(model)
        sp = self.sequence_parallel
        if self.shared_prefix and sp is not None:
            return through_root(model, functools.partial(
                sp_grouped_completion_logprobs, model, input_ids, attention_mask, completion_width, sp,
                temperature, with_entropy, self.chunk_size, token_mask_hook, row_groups, pack=self.pack,
                pad_spans=pad_spans, entropy_grad=self.entropy_grad, count_prompts=count_prompts,
            ))  # fmt: skip
        if self.shared_prefix:
            return through_root(model, functools.partial(
                grouped_completion_logprobs, model, input_ids, attention_mask, completion_width, None,
                temperature, with_entropy, self.chunk_size, token_mask_hook=token_mask_hook,
                row_groups=row_groups, pack=self.pack, pad_spans=pad_spans, entropy_grad=self.entropy_grad,
                count_prompts=count_prompts,
            ))  # fmt: skip
        if len(input_ids) == 0:
            return self._dummy(model, input_ids, completion_width, pad_spans, with_entropy)
        ids, mask = trim_left_padding(input_ids, attention_mask)  # [n, P' + C]
        if sp is not None:
            return through_root(model, functools.partial(
                sp_completion_logprobs, model, ids, mask, completion_width, sp, temperature, with_entropy,
                self.chunk_size, token_mask_hook, self.entropy_grad,
            ))  # fmt: skip
        if token_mask_hook is not None:
            token_mask_hook(mask.bool())
        try:
            return self._per_row(model, ids, mask, completion_width, temperature, with_entropy)
        finally:
            if token_mask_hook is not None:
                token_mask_hook(None)

    def _dummy(self, model, input_ids, width, pad_spans, with_entropy):
        """No rows: ``[0, C]`` log-probs, after one discarded 2-token forward if ``pad_spans`` asks for it."""
        logp = torch.zeros(0, width, device=input_ids.device)  # [0, C]
        if pad_spans > 0:
            ids = input_ids.new_zeros(1, 2)  # [1, 2]
            out, _ = self._per_row(model, ids, torch.ones_like(ids), 1, 1.0, False)  # [1, 1]
            logp = logp + zero_tie([out])
        return logp, (torch.zeros_like(logp) if with_entropy else None)

    def _per_row(self, model, ids, mask, width, temperature, with_entropy):
        if self._chunked_head:
            try:
                lm_head_of(model)
            except NotImplementedError as err:
                log.warning("chunked LM head unavailable (%s): using the model's own head", err)
                self._chunked_head = False
            else:
                return through_root(model, functools.partial(
                    chunked_completion_logprobs, model, ids, mask, width, temperature, with_entropy,
                    self.chunk_size, self.entropy_grad,
                ))  # fmt: skip
        return completion_logprobs(model, ids, mask, width, temperature, with_entropy, self.entropy_grad)

    def _fall_back(self, reason: str) -> None:
        log.warning("module.logprobs.shared_prefix: %s; computing log-probs one row at a time", reason)
        self.shared_prefix = False
