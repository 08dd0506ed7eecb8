"""Our own decode loop over one shared copy of each prompt's key/values (``rollout=hf_shared``'s default).

``generate`` over a :class:`~longact_pl.rollout.prefix_generate.SharedPrefixCache` already keeps the prompt
single, but per token it still concatenates every layer's completion cache, builds a ``[N, 1, 1, P + t]``
mask, runs its logits-processor and stopping-criteria machinery and keeps the raw logits of every step
(``[N, C, V]`` fp32: 20 GB for 8 rows x 4k tokens of a 150k vocabulary). Here:

* :func:`decode` prefills the B prompts together (all P tokens, B rows), samples the first token of all G
  rows of a prompt from that prefill's last logits, then runs one ``[N, 1]`` forward per token (C - 1 in
  all) and stops as soon as every row has produced an EOS (one host sync per token: that check); under
  FSDP / ZeRO-3 over several ranks, a rank whose rows have ended keeps running forwards until every rank's
  have (``generate``'s ``synced_gpus``), as the sharded forwards are collectives;
* :class:`DecodeCache` holds the prompt key/values once per prompt (``[B, h, P, d]``) and writes each
  completion token's key/values into a buffer allocated once (``[B, h, G, C, d]``), with no concatenation;
* :func:`decode_attention` (``attn_implementation="longact_shared_decode"``, registered without a mask
  function, so the model builds no mask) lets the G rows of a group query the shared prompt keys in one
  matmul, then their own keys; one softmax spans both, left padding is masked from the cache's own mask;
* the token is drawn by :class:`~longact_pl.rollout.token_sampling.TokenSampler` (``generate``'s
  temperature / top-k / top-p), which also returns its behaviour log-prob, so no logits are kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.distributed as dist
from torch import nn
from transformers import AttentionInterface, DynamicCache
from transformers.distributed.fsdp import is_fsdp_managed_module
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

from longact_pl.ops.positions import position_ids_from_mask
from longact_pl.ops.shared_prefix import full_attention_only
from longact_pl.rollout.attention_switch import attention_switched
from longact_pl.rollout.token_sampling import TokenSampler

ATTN_NAME = "longact_shared_decode"
_ACTIVE: ContextVar[DecodeCache | None] = ContextVar("longact_shared_decode_cache", default=None)


class DecodeCache:
    """Prompt key/values once per prompt plus a preallocated buffer of the completions' key/values.

    Only ``update`` is called by the model (through :func:`decode_attention`'s layers); the loop moves
    :attr:`length` on after each forward.

    Args:
        prompt_cache: A filled cache of B rows (one per prompt) over the P prompt positions.
        prompt_mask: ``[B, P]`` the prompts' attention mask (left padding = 0).
        group: G, rows per prompt.
        capacity: Completion tokens the buffer holds (the generation budget).
    """

    def __init__(
        self, prompt_cache: DynamicCache, prompt_mask: torch.Tensor, group: int, capacity: int
    ) -> None:
        # keys transposed and everything cast to the autocast dtype once, not by every step's matmul (the
        # prefill leaves fp32 key/values under bf16 autocast; the matmul would cast them to the same values)
        self.dtype = _matmul_dtype(prompt_cache.layers[0].keys)
        self.prefix = [
            (
                layer.keys.transpose(-1, -2).to(self.dtype).contiguous(),
                layer.values.to(self.dtype).contiguous(),
            )
            for layer in prompt_cache.layers
        ]  # [B, h, d, P], [B, h, P, d]
        pad = ~prompt_mask.bool()  # [B, P]
        self.pad = pad.view(pad.shape[0], 1, 1, 1, -1) if pad.any() else None  # [B, 1, 1, 1, P]
        self.group, self.capacity, self.length = group, capacity, 0
        self.own: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.prefix)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Positions seen: the prompt width plus the completion tokens stored."""
        return self.prefix[layer_idx][0].shape[-1] + self.length

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, cache_kwargs: dict | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one step's key/values ``[N, h, 1, d]``; returns the rows' own ``[B, h, G, t, d]`` so far."""
        rows, kv_heads, q_len, dim = key.shape
        if q_len != 1 or self.length >= self.capacity:
            raise ValueError(f"DecodeCache takes one token per step up to {self.capacity}, got {q_len}")
        batch = rows // self.group
        if self.own[layer_idx] is None:
            shape = (batch, kv_heads, self.group, self.capacity, dim)
            self.own[layer_idx] = (
                torch.empty(shape, dtype=self.dtype, device=key.device),
                torch.empty(shape, dtype=self.dtype, device=value.device),
            )
        keys, values = self.own[layer_idx]  # [B, h, G, C, d]
        t = self.length
        keys[:, :, :, t] = key.view(batch, self.group, kv_heads, dim).transpose(1, 2)  # [B, h, G, d]
        values[:, :, :, t] = value.view(batch, self.group, kv_heads, dim).transpose(1, 2)
        return keys[:, :, :, : t + 1], values[:, :, :, : t + 1]  # [B, h, G, t + 1, d]


def _matmul_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of a matmul on ``x`` here: the autocast dtype inside an autocast region, else ``x``'s."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def decode_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """One decode step over the shared prompt plus each row's own tokens (HF attention-interface signature).

    Args:
        module: The attention module (``layer_idx``).
        query: ``[N, H, 1, d]`` with ``N = B * G``; query head ``j`` reads key/value head ``j // (H / h)``.
        key: ``[B, h, G, t, d]`` the rows' own keys, as :meth:`DecodeCache.update` returns them.
        value: ``[B, h, G, t, d]``.
        attention_mask: Ignored (``None``: no mask function is registered); padding comes from the cache.
        dropout: Must be 0 (inference only).
        scaling: Softmax scale (default ``d ** -0.5``).
        **kwargs: The model's other attention arguments (unused).

    Returns:
        ``(attn_output [N, 1, H, d], None)``.
    """
    cache = _ACTIVE.get()
    if cache is None or dropout > 0:
        raise RuntimeError(f"attn_implementation={ATTN_NAME!r} runs only inside shared_decode.decode")
    pk_t, pv = cache.prefix[module.layer_idx]  # [B, h, d, P], [B, h, P, d]
    rows, heads, _, dim = query.shape
    batch, kv_heads, width = pv.shape[0], pv.shape[1], pv.shape[2]
    group, rep = rows // batch, heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    q = query.reshape(batch, group, kv_heads, rep, dim).transpose(1, 2)  # [B, h, G, r, d]
    s_pre = q.reshape(batch, kv_heads, group * rep, dim) @ pk_t  # [B, h, G * r, P]
    s_own = q @ key.transpose(-1, -2)  # [B, h, G, r, t]
    scores = torch.cat([s_pre.view(batch, kv_heads, group, rep, width), s_own], -1).float().mul_(scale)
    if cache.pad is not None:  # [B, h, G, r, P + t]: left padding of the prompts
        scores[..., :width].masked_fill_(cache.pad, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(value.dtype)  # [B, h, G, r, P + t]
    out = probs[..., :width].reshape(batch, kv_heads, group * rep, width) @ pv  # [B, h, G * r, d]
    out = out.view(batch, kv_heads, group, rep, dim) + probs[..., width:] @ value  # [B, h, G, r, d]
    return out.permute(0, 2, 1, 3, 4).reshape(rows, 1, heads, dim), None  # [N, 1, H, d]


# no mask function: the model's create_causal_mask returns None for this implementation
AttentionInterface.register(ATTN_NAME, decode_attention)


@contextmanager
def _decoding(model: nn.Module, cache: DecodeCache) -> Iterator[None]:
    """Run ``model`` with :func:`decode_attention` over ``cache`` inside the block."""
    with attention_switched(model, ATTN_NAME, _ACTIVE, cache):
        yield


@torch.no_grad()
def decode(
    policy: nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    group: int,
    max_new_tokens: int,
    sampler: TokenSampler,
    eos_ids: list[int],
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``group`` completions per prompt, each prompt prefilled once (the module docstring).

    Rows that have produced an EOS get ``pad_id`` afterwards, as ``generate`` gives them.

    Args:
        policy: A full-attention causal LM (in eval mode).
        ids: ``[B, P]`` left-padded prompts.
        mask: ``[B, P]`` their attention mask.
        group: G, completions per prompt.
        max_new_tokens: C, the generation budget.
        sampler: Draws each token and gives its behaviour log-prob.
        eos_ids: Ids that end a completion.
        pad_id: Filler after a row's EOS.

    Returns:
        ``(completion [N, T] long, behaviour_logp [N, T] fp32)`` with ``N = B * G`` rows grouped by prompt
        and ``T <= C`` (fewer when every row ended early).
    """
    if not full_attention_only(policy):
        raise NotImplementedError("shared_decode supports full-attention decoders only")
    batch, device = ids.shape[0], ids.device
    rows = batch * group
    prompt_cache = DynamicCache(config=policy.config)
    logits = policy(
        input_ids=ids,
        attention_mask=mask,
        position_ids=position_ids_from_mask(mask),  # [B, P]
        past_key_values=prompt_cache,
        use_cache=True,
        logits_to_keep=1,
    ).logits[:, -1]  # [B, V]
    logits = logits.repeat_interleave(group, dim=0)  # [N, V]: a group's rows share the first distribution
    cache = DecodeCache(prompt_cache, mask, group, max_new_tokens)
    del prompt_cache
    tokens = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)  # [N, C]
    logps = torch.zeros((rows, max_new_tokens), dtype=torch.float32, device=device)  # [N, C]
    eos = torch.tensor(eos_ids, device=device)
    ended = torch.zeros(rows, dtype=torch.bool, device=device)  # [N]
    first = mask.sum(-1).repeat_interleave(group).unsqueeze(1)  # [N, 1]: position of the first new token
    lockstep = lockstep_ranks(policy)
    steps, running = 0, True  # tokens this rank has drawn; whether any of its rows is still going
    with _decoding(policy, cache):
        for t in range(max_new_tokens):
            if running:
                token, logp = sampler(logits)  # [N], [N]
                token = token.masked_fill(ended, pad_id)  # [N]
                tokens[:, t], logps[:, t] = token, logp
                ended |= torch.isin(token, eos)
                steps, running = t + 1, not bool(ended.all())  # the one host sync per token
            else:  # lock-stepped: this rank has ended, another has not; forward padding, draw nothing
                token = torch.full_like(token, pad_id)
            if t + 1 == max_new_tokens or not (any_rank_running(running, device) if lockstep else running):
                break
            logits = policy(
                input_ids=token.unsqueeze(1),  # [N, 1]
                position_ids=first + t,  # [N, 1]
                past_key_values=cache,
                use_cache=True,
            ).logits[:, -1]  # [N, V]
            cache.length += 1
    return tokens[:, :steps], logps[:, :steps]


def lockstep_ranks(policy: nn.Module) -> bool:
    """Whether every rank must run the same number of forwards (FSDP or ZeRO-3 over several ranks).

    The same rule as ``generate``'s ``synced_gpus``; ``longact_pl.strategies`` marks FSDP2 policies.
    """
    return (is_deepspeed_zero3_enabled() or is_fsdp_managed_module(policy)) and _world_size() > 1


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def any_rank_running(running: bool, device: torch.device) -> bool:
    """Whether some rank still has a row going (one all-reduce; ``generate`` does the same per token)."""
    flag = torch.tensor(1.0 if running else 0.0, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.SUM)
    return flag.item() > 0
