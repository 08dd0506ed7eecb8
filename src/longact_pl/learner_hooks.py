"""What the update loop tells the components that ride on it (LongAct's gradient masking and statistics).

The learner owns the contract: a component implements :class:`LearnerHook` and registers itself with
``Learner.add_hook`` (``SaliencyMask`` does so in its ``setup``). Per optimizer step the learner calls,
in order:

1. ``on_forward(token_mask)`` around every training forward of the policy: the bool real-token mask
   ``[b, t]`` of the forward's input right before it runs, ``None`` right after (statistics count each real
   token once; no-grad passes and lock-step dummies are not announced). The layer-interleaved shared-prompt
   pass (``ops/interleaved.py``) tells it around each decoder layer's run instead, the same mask object at
   every layer, so each real token is still counted once by each layer's probes;
2. ``transform_grads(params)`` once on the accumulated gradient, before the non-finite guard checks it and
   ``train/grad_norm`` measures it (both see the gradient that is applied);
3. ``after_step()`` once the optimizer step ran (not after a skipped one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class LearnerHook(Protocol):
    """A component that rides on the learner's update loop (see the module docstring for the order)."""

    def on_forward(self, token_mask: torch.Tensor | None) -> None:
        """Real-token mask ``[b, t]`` of the next training forward's input; ``None`` once it ran."""
        ...

    def transform_grads(self, params: Sequence[nn.Parameter]) -> None:
        """Change the accumulated gradients of ``params`` (the policy's) in place, once per optimizer step."""
        ...

    def after_step(self) -> None:
        """The optimizer step that :meth:`transform_grads` prepared has run."""
        ...


class LearnerHooks:
    """The hooks registered with one learner, called in registration order."""

    def __init__(self) -> None:
        self._hooks: list[LearnerHook] = []

    def add(self, hook: LearnerHook) -> None:
        """Register ``hook`` (once: adding it again is a no-op).

        Raises:
            TypeError: If ``hook`` lacks a method of :class:`LearnerHook`.
        """
        if not isinstance(hook, LearnerHook):
            raise TypeError(
                f"{type(hook).__name__} is not a LearnerHook (on_forward, transform_grads, after_step)"
            )
        if not any(h is hook for h in self._hooks):
            self._hooks.append(hook)

    def remove(self, hook: LearnerHook) -> None:
        """Unregister ``hook`` (no-op if it is not registered)."""
        self._hooks = [h for h in self._hooks if h is not hook]

    def __bool__(self) -> bool:
        return bool(self._hooks)

    def __len__(self) -> int:
        return len(self._hooks)

    def on_forward(self, token_mask: torch.Tensor | None) -> None:
        """Tell every hook the next training forward's real-token mask (or ``None`` after it)."""
        for hook in self._hooks:
            hook.on_forward(token_mask)

    def transform_grads(self, params: Sequence[nn.Parameter]) -> None:
        """Let every hook change the accumulated gradient, in registration order."""
        for hook in self._hooks:
            hook.transform_grads(params)

    def after_step(self) -> None:
        """Tell every hook the optimizer step ran."""
        for hook in self._hooks:
            hook.after_step()

    @property
    def token_mask_hook(self):
        """``on_forward`` as the log-prob passes take it (``None`` without hooks: nothing to tell)."""
        return self.on_forward if self._hooks else None
