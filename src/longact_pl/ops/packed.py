"""Padding-free completions: a micro-batch's completions packed into one row, each on its group's prompt.

The shared-prefix pass (:mod:`longact_pl.ops.shared_prefix`) runs each group's prompt once and records its
key/values. The padded completion pass then runs ``[G, C]`` rows, each padded to the longest completion. The
packed pass runs one row of ``T = sum(lengths)`` tokens instead, with no padding:

* **Layout** (:class:`PackedCompletions`, the contract a sequence-parallel split relies on): the real tokens
  of every row, row after row (``cu_seqlens [R + 1]`` marks where each row starts); per token its row
  (``seq [T]``), its column in the row (``col [T]``), the span whose prompt it continues (``owner [T]``) and
  its position ``position_ids = prompt_length[owner] + col``, exactly the padded pass's positions.
* **Keys**: every span's prompt key/values, span after span (``[1, h, sum(P_s), d]``, one copy each), then
  the packed completions' own key/values (``[1, h, T, d]``).
* **Mask** (:meth:`PackedCompletions.mask_function`, an index-based Hugging Face mask function, so the
  model's own mask builder turns it into its format: a bool mask for SDPA, an additive one for eager): a
  token attends to its own span's prompt and to the tokens of its own row at columns ``<= col``. The
  padded pass's mask restricted to real tokens, so log-probs and gradients are the same.
* **Head**: the token at ``col = 0`` is predicted by its prompt's last hidden state, any other by the
  previous token of its row; log-probs come back scattered into ``[R, C]`` (zeros at padding).

Kernels (:mod:`longact_pl.ops.attention_kernels`, its ``choose_kernel`` picks one from the attention
implementation and the device): the 4D mask above (``sdpa_mask``: the CPU path and the
reference), FlexAttention on a block mask built from the layout (``flex``) or two flash-attn varlen calls
merged by log-sum-exp (``flash_varlen``); the last two compute only (tiles of) real query-key pairs.
Covered: ``sdpa``, ``eager``, ``flex_attention`` and, with flash-attn installed, ``flash_attention_2``
(:func:`packing_unsupported` says why another takes the padded pass).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

from longact_pl.ops.attention_kernels import choose_kernel, flash_attn_available, packed_attention
from longact_pl.ops.chunked import head_logprobs, lm_head_of
from longact_pl.ops.passes import TokenMaskHook, dummy_rows, hooked_forward, with_embeds, zero_tie
from longact_pl.ops.sequence_parallel.attention import inner_implementation

# attention implementations the packed pass has a kernel for (see longact_pl.ops.attention_kernels)
PACKABLE_ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2")


def packing_unsupported(model: nn.Module) -> str | None:
    """Why ``model`` cannot take the packed pass (``None``: it can)."""
    impl = inner_implementation(model)  # sdpa for ulysses_sdpa (sequence parallelism wraps it)
    if impl not in PACKABLE_ATTENTION:
        return f"attn_implementation={impl!r} (packing covers {list(PACKABLE_ATTENTION)})"
    if impl == "flash_attention_2" and not flash_attn_available():
        return (
            "attn_implementation='flash_attention_2' without the flash-attn package (pip install flash-attn)"
        )
    return None


@dataclass
class PackedCompletions:
    """The real completion tokens of ``R`` rows in one row of ``T`` tokens (see the module docstring).

    Attributes:
        input_ids: ``[1, T]`` token ids.
        position_ids: ``[1, T]`` ``prompt_lengths[owner] + col``.
        owner: ``[T]`` span (prompt) index of each token.
        seq: ``[T]`` row index of each token.
        col: ``[T]`` column of each token in its row.
        cu_seqlens: ``[R + 1]`` int32 start of each row in the packed row (rows without tokens are empty).
        prompt_lengths: ``[S]`` real prompt length of each span; span ``s``'s prompt keys are
            ``sum(prompt_lengths[:s]) .. sum(prompt_lengths[:s + 1]) - 1``.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    owner: torch.Tensor
    seq: torch.Tensor
    col: torch.Tensor
    cu_seqlens: torch.Tensor
    prompt_lengths: torch.Tensor

    @classmethod
    def build(
        cls,
        ids: torch.Tensor,
        mask: torch.Tensor,
        row_span: torch.Tensor,
        prompt_lengths: torch.Tensor,
    ) -> PackedCompletions:
        """Pack right-padded completions.

        Args:
            ids: ``[R, C]`` completion ids.
            mask: ``[R, C]`` 1 for real tokens; each row's real tokens come first (right padding).
            row_span: ``[R]`` span index of each row.
            prompt_lengths: ``[S]`` real prompt length of each span.

        Raises:
            ValueError: If a row's real tokens are not a prefix of it.
        """
        real = mask.bool()  # [R, C]
        lengths = real.sum(-1)  # [R]
        width = ids.shape[1]
        if not torch.equal(real, torch.arange(width, device=ids.device) < lengths[:, None]):
            raise ValueError("packed completions must be right-padded (real tokens first in each row)")
        seq, col = real.nonzero(as_tuple=True)  # [T], [T] row-major: row after row
        owner = row_span[seq]  # [T]
        cu = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=ids.device)  # [R + 1]
        cu[1:] = lengths.cumsum(0)
        return cls(
            input_ids=ids[seq, col].unsqueeze(0),  # [1, T]
            position_ids=(prompt_lengths[owner] + col).unsqueeze(0),  # [1, T]
            owner=owner,
            seq=seq,
            col=col,
            cu_seqlens=cu,
            prompt_lengths=prompt_lengths,
        )

    @property
    def num_tokens(self) -> int:
        """T."""
        return self.input_ids.shape[1]

    @property
    def num_prompt_keys(self) -> int:
        """``sum(prompt_lengths)``: the prompt keys in front of the packed tokens' own keys."""
        return int(self.prompt_lengths.sum())

    def mask_function(self) -> Callable:
        """Hugging Face mask function ``(b, h, q, kv) -> bool`` over ``q < T`` and ``kv < sum(P_s) + T``.

        Index-based (usable by ``sdpa_mask``'s broadcasting and by ``flex_attention``'s block masks).
        """
        prompt_span = torch.repeat_interleave(
            torch.arange(len(self.prompt_lengths), device=self.owner.device), self.prompt_lengths
        )  # [sum(P_s)]
        key_span = torch.cat([prompt_span, self.owner])  # [K]
        key_seq = torch.cat([torch.full_like(prompt_span, -1), self.seq])  # [K]: -1 for prompt keys
        key_col = torch.cat([torch.zeros_like(prompt_span), self.col])  # [K]
        owner, seq, col = self.owner, self.seq, self.col

        def packed_mask(batch_idx, head_idx, q_idx, kv_idx):
            own_prompt = (key_seq[kv_idx] < 0) & (key_span[kv_idx] == owner[q_idx])
            own_row = (key_seq[kv_idx] == seq[q_idx]) & (key_col[kv_idx] <= col[q_idx])
            return own_prompt | own_row

        return packed_mask

    def attention_mask(self, model: nn.Module, dtype: torch.dtype) -> torch.Tensor:
        """The 4D mask ``[1, 1, T, sum(P_s) + T]`` in the format of ``model``'s attention implementation."""
        build = ALL_MASK_ATTENTION_FUNCTIONS[model.config._attn_implementation]
        return build(
            batch_size=1, q_length=self.num_tokens, kv_length=self.num_prompt_keys + self.num_tokens,
            mask_function=self.mask_function(), attention_mask=None, allow_is_causal_skip=False,
            dtype=dtype, config=model.config, device=self.input_ids.device,
        )  # fmt: skip

    def predictors(self, hidden: torch.Tensor, prompt_last: torch.Tensor) -> torch.Tensor:
        """Hidden states that predict each packed token, ``[T, H]``.

        Args:
            hidden: ``[1, T, H]`` the packed pass's output.
            prompt_last: ``[S, H]`` each span's last prompt hidden state (predicts column 0).
        """
        previous = torch.cat([hidden[0, :1], hidden[0, :-1]])  # [T, H]: token t - 1 (t = 0: a placeholder)
        first = (self.col == 0).unsqueeze(-1)  # [T, 1]
        return torch.where(first, prompt_last[self.owner], previous)  # [T, H]

    def scatter(self, values: torch.Tensor, rows: int, width: int) -> torch.Tensor:
        """Values ``[T_r]`` of the first ``rows`` rows' tokens back into ``[rows, width]`` (zeros at padding).

        The first rows' tokens are a prefix of the packed row (rows are packed in order).
        """
        n = values.shape[0]
        out = values.new_zeros(rows, width)  # [rows, width]
        return out.index_put((self.seq[:n], self.col[:n]), values)


class PackedPrefixLayer(DynamicLayer):
    """Packed pass: the spans' prompt key/values ``[1, h, sum(P_s), d]`` in front of the packed tokens' own.

    Stores nothing (replay-safe under gradient checkpointing, like the shared-prefix caches).
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values  # [1, h, sum(P_s), d]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompts' key/values followed by the packed tokens' ``[1, h, T, d]``."""
        keys = torch.cat([self.keys, key_states], dim=-2)  # [1, h, sum(P_s) + T, d]
        values = torch.cat([self.values, value_states], dim=-2)  # [1, h, sum(P_s) + T, d]
        return keys, values


def packed_layout(
    prompt_lengths: list[int], spans: list[tuple[int, int]], targets: torch.Tensor, mask: torch.Tensor
) -> tuple[PackedCompletions, int]:
    """``(layout, real tokens)`` of ``targets`` ``[N, C]`` (``mask`` ``[N, C]``) on the prompts' lengths.

    The real rows' tokens come first in the layout.
    Entries of ``prompt_lengths`` past ``len(spans)`` are lock-step dummies, which get a 2-token dummy
    completion each. Used by the single-process and the sequence-parallel packed pass.
    """
    rows, width = targets.shape
    dummies = len(prompt_lengths) - len(spans)
    ids, real = targets, mask
    row_span = torch.repeat_interleave(
        torch.arange(len(spans), device=targets.device),
        torch.tensor([b - a for a, b in spans], device=targets.device, dtype=torch.long),
    )  # [N]
    if dummies:
        extra_ids, extra_mask = dummy_rows(dummies, width, targets)  # [d, W]
        cols = extra_ids.shape[1]
        ids = torch.cat([F.pad(ids, (0, cols - width)), extra_ids])  # [N + d, W]
        real = torch.cat([F.pad(real, (0, cols - width)), extra_mask])  # [N + d, W]
        row_span = torch.cat([row_span, torch.arange(len(spans), len(prompt_lengths), device=targets.device)])
    lengths = torch.tensor(prompt_lengths, device=targets.device)  # [S]
    layout = PackedCompletions.build(ids, real, row_span, lengths)
    return layout, int(layout.cu_seqlens[rows])


def packed_kernel_call(model: nn.Module, layout: PackedCompletions, kernel: str | None):
    """``(attention inputs, kernel call)`` of ``layout`` on ``kernel`` (``None``: chosen for its device).

    Raises:
        ValueError: If the kernel cannot be dispatched for the model's implementation.
    """
    implementation = inner_implementation(model)
    kernel = kernel or choose_kernel(implementation, layout.owner.device)[0]
    return packed_attention(model, implementation, layout, kernel)


@dataclass
class PackedCall:
    """A packed completion forward, ready to run: its layout and the decoder's inputs.

    Attributes:
        layout: The packed layout (lock-step dummies' rows after the real ones).
        inputs: Decoder keyword arguments (``input_ids``, ``position_ids``, ``attention_mask`` and the kernel
            call); ``past_key_values`` is added by the runner.
        real: ``[1, T]`` bool, ``False`` at the dummies' tokens (statistics hooks).
        call: The kernel call to check after the forward (``None``: the model's own path).
        rows: N real rows.
        width: C.
        real_tokens: Tokens of the real rows (the first ones of the packed row).
    """

    layout: PackedCompletions
    inputs: dict
    real: torch.Tensor
    call: object
    rows: int
    width: int
    real_tokens: int

    @classmethod
    def build(
        cls,
        model: nn.Module,
        prompt_lengths: list[int],
        spans: list[tuple[int, int]],
        targets: torch.Tensor,
        mask: torch.Tensor,
        kernel: str | None,
    ) -> PackedCall:
        """Lay out ``targets`` ``[N, C]`` (``mask`` ``[N, C]``) on the prompts of ``prompt_lengths``.

        Entries of ``prompt_lengths`` past ``len(spans)`` are lock-step dummies, which get a 2-token dummy
        completion each; ``kernel``: see :data:`~longact_pl.ops.attention_kernels.KERNELS` (``None``: chosen
        from the model's attention implementation and the device, ``choose_kernel``).
        """
        rows, width = targets.shape
        layout, real_tokens = packed_layout(prompt_lengths, spans, targets, mask)
        attention, call = packed_kernel_call(model, layout, kernel)
        inputs = {"input_ids": layout.input_ids, "position_ids": layout.position_ids, **attention}
        tokens = (torch.arange(layout.num_tokens, device=targets.device) < real_tokens).unsqueeze(0)  # [1, T]
        return cls(layout, inputs, tokens, call, rows, width, real_tokens)

    def logprobs(
        self,
        model: nn.Module,
        hidden: torch.Tensor,
        lasts: torch.Tensor,
        temperature: float,
        with_entropy: bool,
        chunk_size: int | None,
        entropy_grad: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs from the packed output ``hidden`` ``[1, T, H]`` and the prompts' last states ``[S, H]``.

        Returns:
            ``(logp [N, C], entropy [N, C] or None)``, zeros at padding; every forward tied in.
        """
        tie = zero_tie([hidden, lasts])
        if self.real_tokens == 0:  # only lock-step dummies
            logp = torch.zeros(self.rows, self.width, device=hidden.device)  # [0, C]
            return logp + tie, (torch.zeros_like(logp) if with_entropy else None)
        weight, bias = lm_head_of(model)
        layout, n = self.layout, self.real_tokens
        logp, entropy = head_logprobs(
            layout.predictors(hidden, lasts)[:n].unsqueeze(0), weight, bias,
            layout.input_ids[:, :n], temperature, with_entropy, chunk_size, entropy_grad,
        )  # [1, T_r]  # fmt: skip
        out = layout.scatter(logp[0], self.rows, self.width) + tie  # [N, C]
        return out, (layout.scatter(entropy[0], self.rows, self.width) if entropy is not None else None)


def packed_completion_logprobs(
    model: nn.Module,
    decoder: nn.Module,
    prompts: list[tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]],
    packed: PackedCall,
    embeds: torch.Tensor,
    temperature: float,
    with_entropy: bool,
    chunk_size: int | None,
    hook: TokenMaskHook | None,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of every row's completion from one packed forward on the spans' recorded prompts.

    Args:
        model: The causal LM (its head gives the log-probs).
        decoder: Its base model.
        prompts: Per span, each layer's prompt key/values and the last prompt hidden state ``[1, 1, H]``
            (:func:`longact_pl.ops.shared_prefix.prompt_pass`); spans past the real ones are lock-step
            dummies, which get a 2-token dummy completion each.
        packed: The packed forward (:meth:`PackedCall.build` on the same prompts, spans and completions).
        embeds: ``[1, T, H]`` the packed row's input embeddings
            (:func:`~longact_pl.ops.passes.embed_together`, with the prompts').
        temperature: Log-probs at this temperature.
        with_entropy: Also return the entropy.
        chunk_size: LM-head chunk (tokens).
        hook: Told ``[1, T]`` (``False`` at dummy tokens) around the packed forward.
        entropy_grad: The entropy keeps its gradient (entropy bonus).

    Returns:
        ``(logp [N, C], entropy [N, C] or None)``, zeros at padding.
    """
    layers = [
        PackedPrefixLayer(
            torch.cat([kv[i][0] for kv, _ in prompts], -2), torch.cat([kv[i][1] for kv, _ in prompts], -2)
        )
        for i in range(len(prompts[0][0]))
    ]  # per layer: the prompts' key/values, span after span
    inputs = with_embeds(packed.inputs, embeds)
    hidden = hooked_forward(decoder, hook, packed.real, past_key_values=Cache(layers=layers), **inputs)
    if packed.call is not None:
        packed.call.check(len(layers))
    lasts = torch.cat([last[0] for _, last in prompts])  # [S, H]
    return packed.logprobs(model, hidden, lasts, temperature, with_entropy, chunk_size, entropy_grad)
