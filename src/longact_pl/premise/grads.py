"""Answer NLL of one sequence and its gradient on the masked targets' rows, as one ``[R, in]`` row space.

The premise tool reads gradients only on the target weights (W_Q / W_K rows); every other parameter is
frozen while it runs, so backward skips their weight gradients. The rows of all targets are stacked in
module order into one ``[R, in]`` matrix (a fused Q/K/V projection contributes its query and key rows), so a
mask over all targets is one ``[R]`` bool vector. Biases are not part of the row space.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from longact_pl.masking.targets import Target


class RowSpace:
    """The target weights' rows, stacked: gather gradients, read and write weights.

    Args:
        targets: The masked targets (``masking/targets.py``), in module order.

    Raises:
        ValueError: If the targets' weights have different input widths (they cannot share one row space).
    """

    def __init__(self, targets: Sequence[Target]) -> None:
        self.targets = list(targets)
        widths = {t.linear.in_features for t in self.targets}
        if len(widths) != 1:
            raise ValueError(f"premise: target weights have different input widths {sorted(widths)}")
        self.width = widths.pop()
        self.sizes = [t.rows for t in self.targets]

    @property
    def rows(self) -> int:
        """Total rows ``R``."""
        return sum(self.sizes)

    def params(self) -> list[nn.Parameter]:
        """The distinct target weights."""
        seen: dict[int, nn.Parameter] = {}
        for t in self.targets:
            seen.setdefault(id(t.linear.weight), t.linear.weight)
        return list(seen.values())

    def _part(self, t: Target, full: Tensor) -> Tensor:
        return full if t.part_rows is None else full[t.part_rows.to(full.device)]

    def gather_grad(self) -> Tensor:
        """The targets' weight gradients as ``[R, in]`` float32 (zeros where a weight has no gradient)."""
        parts = []
        for t in self.targets:
            g = t.linear.weight.grad
            g = torch.zeros_like(t.linear.weight) if g is None else g
            parts.append(self._part(t, g).float())  # [rows_t, in]
        return torch.cat(parts)  # [R, in]

    def weights(self) -> Tensor:
        """The targets' weights as ``[R, in]`` (a copy, float32)."""
        return torch.cat([self._part(t, t.linear.weight.detach()).float() for t in self.targets])  # [R, in]

    @torch.no_grad()
    def add_(self, delta: Tensor) -> None:
        """Add ``delta`` (``[R, in]``) to the targets' weights in place."""
        for t, d in zip(self.targets, delta.split(self.sizes)):
            w = t.linear.weight
            if t.part_rows is None:
                w.add_(d.to(w.dtype))
            else:
                w.index_add_(0, t.part_rows.to(w.device), d.to(w.dtype))

    @torch.no_grad()
    def set_(self, value: Tensor) -> None:
        """Write ``value`` (``[R, in]``, a copy from :meth:`weights`) into the targets' weights."""
        for t, v in zip(self.targets, value.split(self.sizes)):
            w = t.linear.weight
            if t.part_rows is None:
                w.copy_(v.to(w.dtype))
            else:
                w.index_copy_(0, t.part_rows.to(w.device), v.to(w.dtype))


def freeze_all_but(model: nn.Module, keep: Sequence[nn.Parameter]) -> None:
    """``requires_grad`` only on ``keep`` (the target weights)."""
    ids = {id(p) for p in keep}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)


def answer_nll(model: nn.Module, ids: Sequence[int], n_answer: int, bf16: bool = False) -> Tensor:
    """Mean NLL of the last ``n_answer`` tokens of ``ids`` (a scalar; only the needed logits are computed).

    Args:
        model: A Hugging Face causal LM.
        ids: Token ids, the answer last.
        n_answer: Scored trailing tokens (>= 1).
        bf16: Run under ``torch.autocast(bfloat16)``.
    """
    if n_answer < 1 or n_answer >= len(ids):
        raise ValueError(f"answer_nll: n_answer={n_answer} must be in [1, {len(ids) - 1}]")
    device = next(model.parameters()).device
    x = torch.tensor([list(ids)], dtype=torch.long, device=device)  # [1, T]
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with amp:
        logits = model(input_ids=x, use_cache=False, logits_to_keep=n_answer + 1).logits  # [1, n+1, V]
    logp = logits[0, :-1].float().log_softmax(-1)  # [n, V]
    target = x[0, -n_answer:]  # [n]
    return -logp.gather(-1, target[:, None]).mean()  # []


def nll_and_grad(
    model: nn.Module, space: RowSpace, ids: Sequence[int], n_answer: int, bf16: bool = False
) -> tuple[float, Tensor]:
    """Answer NLL and its gradient on the target rows.

    Returns:
        ``(nll, gradient)``; the gradient is ``[R, in]`` float32 on the model's device.
    """
    model.zero_grad(set_to_none=True)
    loss = answer_nll(model, ids, n_answer, bf16)
    loss.backward()
    grad = space.gather_grad()  # [R, in]
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), grad


@torch.no_grad()
def nll(model: nn.Module, ids: Sequence[int], n_answer: int, bf16: bool = False) -> float:
    """Answer NLL without gradients."""
    return float(answer_nll(model, ids, n_answer, bf16))
