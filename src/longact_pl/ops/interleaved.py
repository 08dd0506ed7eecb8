"""The shared-prefix pass run layer by layer: prompt(s) then completions through layer 0, then layer 1, ...

:mod:`longact_pl.ops.shared_prefix` runs each prompt through every decoder layer and then the completions
through every layer. Autograd then runs the whole completion backward before the prompt's (the completion
nodes were created later), so at the switch every layer's prompt keys/values and their gradients are alive,
and under gradient checkpointing each checkpointed completion layer also holds its prompt keys/values
until its backward (15.2 GiB of Qwen3-4B's peak at 32k; ``docs/memory.md``). Here one loop goes over the
decoder layers instead: at layer ``i`` the prompt(s) run through layer ``i`` (recording its keys/values) and
the completions run through layer ``i`` attending to them.

* Under gradient checkpointing both runs of layer ``i`` are ONE non-reentrant checkpoint (inputs: the
  hidden states entering layer ``i``; outputs: those leaving it). The prompt's keys/values are recomputed
  inside it instead of held, and the backward of layer ``i`` (completions, then prompt) ends before layer
  ``i - 1``'s starts: one layer's keys/values and their gradients exist at a time.
* Without checkpointing the interleaved forward order alone does it: autograd runs ready nodes by
  decreasing sequence number, so completion layer ``i``, prompt layer ``i``, completion layer ``i - 1``, ...
  and each layer's key/value gradients are consumed before the next layer's are made.

The layers get exactly the keyword arguments the decoder's own forward would give them (masks, rotary
embeddings, the packed kernel call): :func:`layer_inputs` runs the decoder's forward up to its first layer
and captures them. The decoder's final ``norm`` is applied after the loop (Llama-family base models:
:func:`can_interleave`). Values are bit-identical to the two-pass forward (same ops on the same inputs);
gradients equal it up to float summation order (see ``tests/ops/test_interleaved.py``).

Statistics hooks are told each layer run's real-token mask (the same mask objects at every layer), never
during a checkpoint's recompute: each prompt token is counted once per layer, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer

from longact_pl.ops.passes import TokenMaskHook

KeyValues = list[
    tuple[torch.Tensor, torch.Tensor]
]  # per prompt: (keys [1, h, P_s, d], values [1, h, P_s, d])


class _Captured(Exception):
    """Raised by :class:`_FirstLayer` with the decoder's first layer call."""

    def __init__(self, hidden: torch.Tensor, kwargs: dict) -> None:
        super().__init__("captured")
        self.hidden, self.kwargs = hidden, kwargs


class _FirstLayer(nn.Module):
    """Stands in for the decoder's layers while :func:`layer_inputs` runs: stops at the first call."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        raise _Captured(hidden_states, kwargs)


@dataclass
class Stream:
    """One sequence batch going through the layers: its layer-0 input and the layers' keyword arguments.

    Attributes:
        hidden: ``[b, t, H]`` the embeddings entering layer 0 (with their autograd history).
        kwargs: What the decoder's forward passes to every layer (``past_key_values`` included).
        real: ``[b, t]`` bool real-token mask told to statistics hooks around each layer run (``None``: not
            counted).
    """

    hidden: torch.Tensor
    kwargs: dict
    real: torch.Tensor | None

    @property
    def cache(self) -> Cache:
        """The cache the layers update (recording for prompts, the prompts' keys/values for completions)."""
        return self.kwargs["past_key_values"]


def can_interleave(decoder: nn.Module) -> str | None:
    """Why ``decoder`` cannot run interleaved (``None``: it can): a ``layers`` list and a final ``norm``."""
    if not isinstance(getattr(decoder, "layers", None), nn.ModuleList):
        return f"{type(decoder).__name__} has no `layers` ModuleList"
    if not isinstance(getattr(decoder, "norm", None), nn.Module):
        return f"{type(decoder).__name__} has no final `norm`"
    return None


def layer_inputs(decoder: nn.Module, real: torch.Tensor | None, **inputs) -> Stream:
    """Run ``decoder(**inputs)`` up to its first layer; the layer input and keyword arguments it builds.

    Args:
        decoder: The base model (``model.model``).
        real: See :attr:`Stream.real`.
        **inputs: The decoder's inputs (``input_ids``, ``position_ids``, ``past_key_values``, ...).
    """
    layers = decoder.layers
    decoder.layers = nn.ModuleList([_FirstLayer()])
    try:
        decoder(**inputs, use_cache=False)
    except _Captured as got:
        return Stream(got.hidden, got.kwargs, real)
    finally:
        decoder.layers = layers
    raise RuntimeError(f"{type(decoder).__name__}'s forward did not call its first layer")


def sized_layer(length: int, like: torch.Tensor) -> DynamicLayer:
    """A placeholder cache layer reporting ``length`` cached positions to the mask builder, owning no memory.

    Replaced by the real prompt keys/values while a completion layer runs.
    """
    keys = like.new_zeros(1, 1, 1, 1, dtype=torch.float32).expand(1, 1, length, 1)  # [1, 1, P, 1] (a view)
    layer = DynamicLayer()
    layer.lazy_initialization(keys, keys)
    layer.keys, layer.values = keys, keys
    return layer


class _LayerStep:
    """Layer ``i`` of every prompt stream, then of the completion stream (one checkpointed unit)."""

    def __init__(
        self,
        layer: nn.Module,
        index: int,
        prompts: list[Stream],
        completions: Stream,
        prefix: Callable[[KeyValues], DynamicLayer],
        hook: TokenMaskHook | None,
    ) -> None:
        self.layer, self.index, self.prompts, self.completions = layer, index, prompts, completions
        self.prefix, self.hook = prefix, hook
        self.announced = False  # the hook is told once: never during a checkpoint's recompute

    def _run(self, hidden: torch.Tensor, stream: Stream) -> torch.Tensor:
        tell = self.hook is not None and stream.real is not None and not self.announced
        if tell:
            self.hook(stream.real)
        try:  # nn.Module.__call__: the module's hooks (FSDP's) run, Hugging Face's own checkpoint does not
            return nn.Module.__call__(self.layer, hidden, **stream.kwargs)  # [b, t, H]
        finally:
            if tell:
                self.hook(None)

    def __call__(self, *hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(prompt hidden [1, P_s, H] ..., completion hidden [b, t, H])`` into and out of layer ``i``."""
        i = self.index
        out, kv = [], []
        for stream, h in zip(self.prompts, hidden[:-1]):
            out.append(self._run(h, stream))  # [1, P_s, H]
            record = stream.cache.layers[i]
            kv.append((record.keys, record.values))  # [1, h, P_s, d] each
            record.keys, record.values = record.keys.new_empty(0), record.values.new_empty(0)  # drop the refs
        cache = self.completions.cache
        placeholder = cache.layers[i]
        cache.layers[i] = self.prefix(kv)
        try:
            out.append(self._run(hidden[-1], self.completions))  # [b, t, H]
        finally:
            cache.layers[i] = placeholder  # nothing outside the step keeps this layer's keys/values
        self.announced = True
        return tuple(out)


def interleaved_forward(
    decoder: nn.Module,
    prompts: list[Stream],
    completions: Stream,
    prefix: Callable[[KeyValues], DynamicLayer],
    hook: TokenMaskHook | None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Run the prompt streams and the completion stream through the decoder layers, layer by layer.

    Args:
        decoder: The base model (its layers' ``gradient_checkpointing`` decides the joint checkpoint; its
            ``_gradient_checkpointing_func`` is used, which must be non-reentrant, as the caller checks).
        prompts: Prompt streams, each with a cache of recording layers (``prompt_pass``'s).
        completions: The completion stream; its cache holds :func:`sized_layer` placeholders.
        prefix: Builds the completion cache layer from this layer's prompt keys/values (one per prompt).
        hook: Statistics hook (see :class:`Stream`).

    Returns:
        ``([last prompt hidden state [1, 1, H] per prompt], completion hidden [b, t, H])``, after the
        final norm.
    """
    hidden = [s.hidden for s in prompts] + [completions.hidden]  # [1, P_s, H] ..., [b, t, H]
    for i, layer in enumerate(decoder.layers[: decoder.config.num_hidden_layers]):
        step = _LayerStep(layer, i, prompts, completions, prefix, hook)
        if getattr(layer, "gradient_checkpointing", False) and layer.training:
            hidden = list(layer._gradient_checkpointing_func(step, *hidden))
        else:
            hidden = list(step(*hidden))
    lasts = [decoder.norm(h[:, -1:]) for h in hidden[:-1]]  # [1, 1, H] each
    return lasts, decoder.norm(hidden[-1])  # [b, t, H]
