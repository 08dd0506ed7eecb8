"""The LM head under sequence parallelism: each rank scores the completion tokens its positions predict.

A position predicts the next token of its row, so the rank holding a position scores that token; the first
token of a completion is predicted by the last prompt position, on whichever rank holds it. Each rank
scatters its log-probs into ``[n, C]`` (zeros elsewhere) and the group sums them
(:func:`~longact_pl.ops.sequence_parallel.comm.sum_over_group`, gradient passed through once per token).
"""

from __future__ import annotations

import torch

from longact_pl.ops.chunked import head_logprobs
from longact_pl.ops.passes import zero_tie
from longact_pl.ops.sequence_parallel.comm import SPGroup, sum_over_group


class OwnedTokens:
    """Hidden states of the completion tokens this rank predicts, and their places in ``[n, C]``.

    Args:
        rows: n.
        width: C.
    """

    def __init__(self, rows: int, width: int) -> None:
        self.rows, self.width = rows, width
        self.hidden: list[torch.Tensor] = []  # [m_i, H]
        self.index: list[torch.Tensor] = []  # [m_i] flat index row * C + column
        self.outputs: list[torch.Tensor] = []  # every forward's output, tied into the loss

    def tie(self, out: torch.Tensor) -> None:
        """Take a forward's output into the backward even where none of it is scored (:meth:`logprobs`)."""
        self.outputs.append(out)

    def add(self, hidden: torch.Tensor, index: torch.Tensor) -> None:
        """``hidden [m, H]`` predicts the tokens at flat positions ``index [m]`` (``row * C + column``)."""
        if index.numel():
            self.hidden.append(hidden)
            self.index.append(index)

    def add_grid(self, out: torch.Tensor, rows: torch.Tensor, at: torch.Tensor, cols: torch.Tensor) -> None:
        """Positions ``at [k]`` of ``out [r, S, H]`` predict columns ``cols [k]`` of rows ``rows [r]``."""
        self.tie(out)
        self.add(
            out[:, at].reshape(-1, out.shape[-1]), (rows[:, None] * self.width + cols[None, :]).reshape(-1)
        )

    def logprobs(
        self, weight, bias, targets, temperature, with_entropy, chunk_size, sp: SPGroup, entropy_grad=False
    ):
        """Summed over the group: ``(logp [n, C] float32, entropy [n, C] or None)``.

        Args:
            weight: LM head ``[V, H]``.
            bias: ``[V]`` or ``None``.
            targets: ``[n, C]`` token ids (the same on every rank).
            temperature: Log-probs at this temperature.
            with_entropy: Also the entropy.
            chunk_size: LM-head chunk (tokens).
            sp: The group.
            entropy_grad: The entropy keeps its gradient (the entropy bonus), summed over the group like the
                log-probs (each token's gradient reaches the rank that computed it, once).
        """
        n, width = self.rows, self.width
        device = targets.device
        # Every forward's output takes part in the loss (an exact zero where it predicts nothing here): each
        # all-to-all's backward is a collective, and a rank whose outputs got no gradient would skip it while
        # the others wait for it.
        tie = zero_tie(self.outputs)
        if n == 0:  # only lock-step dummies
            logp = torch.zeros(0, width, device=device)  # [0, C]
            return logp + tie, (torch.zeros_like(logp) + tie if with_entropy else None)
        owned = bool(self.hidden)
        # a rank that predicts no completion token still runs the head once, on any hidden state, and ties it
        # in: the LM head gets a (zero) gradient on every rank, as FSDP2's reduce-scatter expects
        hidden = (
            torch.cat(self.hidden) if owned else self.outputs[-1].reshape(-1, weight.shape[1])[:1]
        )  # [m, H]
        index = torch.cat(self.index) if owned else torch.zeros(1, dtype=torch.long, device=device)  # [m]
        logp, entropy = head_logprobs(
            hidden.unsqueeze(0), weight, bias, targets.reshape(-1)[index].unsqueeze(0), temperature,
            with_entropy, chunk_size, entropy_grad,
        )  # [1, m]  # fmt: skip
        full = torch.zeros(n * width, dtype=torch.float32, device=device)  # [n * C]
        full = full.index_put((index,), logp[0]) if owned else full + zero_tie([logp])  # [n * C]
        ent = None
        if entropy is not None:
            ent = torch.zeros(n * width, dtype=torch.float32, device=device)  # [n * C]
            # out of place, so the entropy's graph (entropy_grad) reaches the sum; tied in like the log-probs
            ent = ent.index_put((index,), entropy[0]) if owned else ent + zero_tie([entropy])  # [n * C]
            ent = sum_over_group(ent + tie, sp).view(n, width)  # [n, C]
        return sum_over_group(full + tie, sp).view(n, width), ent
