"""Rows entering the mask at a refresh: no oversized first Adam steps.

A row frozen since calibration never had a gradient, so its Adam moments are zero. Adam's bias
correction divides by ``1 - beta^t`` with the optimizer's *global* step ``t``, which assumes moments
accumulated since step 1: for a row whose first gradient ``g`` arrives at a late step,
``m_hat ~ (1 - b1) g`` and ``v_hat ~ (1 - b2) g^2``, an update of ``(1 - b1) / sqrt(1 - b2) ~ 3.2``
learning rates per element (AdamW defaults), several times what a row trained all along takes (whose ``v``
holds a long history of gradients).

At each refresh, :func:`warm_start_rows` raises every entering row's second moment to at least the
column-wise mean second moment of the rows of the same target that stay in the mask (a row's own, decayed
moment is kept where larger; the first moment is left alone, zero for a row never trained, so its momentum
builds up over the next ~1/(1 - b1) steps). Its first update is then about ``(1 - b1) |g| / sqrt(v_stayed)``:
no larger than the update a trained row with a comparable gradient takes. Only ``v`` is raised, so entering
rows' updates only get smaller. Optimizers without ``exp_avg_sq`` state (SGD) are left alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from longact_pl.masking.sharding import local_rows


def _local(index: Tensor, offset: int, rows: int) -> Tensor:
    """Global row indices that fall in ``[offset, offset + rows)``, made local."""
    return index[(index >= offset) & (index < offset + rows)] - offset  # [n_local]


@torch.no_grad()
def warm_start_rows(
    optimizers: Iterable[torch.optim.Optimizer],
    rows: Sequence[tuple[nn.Parameter, Tensor, Tensor]],
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> int:
    """Give entering rows the second moment of the rows that stayed (where theirs is smaller).

    Args:
        optimizers: The torch optimizers holding the parameters' state.
        rows: ``(parameter, entering rows, stayed rows)``, global row indices.  # [n_in], [n_stay] long
        reduce: Sum over data-parallel ranks (sharded parameters hold different rows on each rank); ``None``
            in a single process.

    Returns:
        Entering rows whose second moment was raised (this rank's rows when sharded).
    """
    work: list[tuple[Tensor, Tensor, Tensor, int]] = []  # (local v, entering local, stayed local, index)
    sums: list[Tensor] = []
    for opt in optimizers:
        for param, entering, stayed in rows:
            v = opt.state.get(param, {}).get("exp_avg_sq")
            if v is None or entering.numel() == 0:
                continue
            local, offset = local_rows(v)  # [rows_local, ...]
            enter_l = _local(entering.to(local.device), offset, local.shape[0])  # [n_in_local]
            stay_l = _local(stayed.to(local.device), offset, local.shape[0])  # [n_stay_local]
            total = local.index_select(0, stay_l).float().sum(0).flatten()  # [cols]
            count = torch.tensor([float(stay_l.numel())], device=local.device)  # [1]
            work.append((local, enter_l, stay_l, len(sums)))
            sums.append(torch.cat([total, count]))  # [cols + 1]
    if not work:
        return 0
    flat = torch.cat([s.to(sums[0].device) for s in sums])  # [sum(cols + 1)]
    flat = reduce(flat) if reduce is not None else flat
    parts = flat.split([s.numel() for s in sums])
    warmed = 0
    for local, enter_l, _, i in work:
        total, count = parts[i][:-1], float(parts[i][-1])
        if count == 0 or enter_l.numel() == 0:
            continue
        fill = (total / count).view(local.shape[1:]).to(local.dtype)  # [cols...]
        current = local.index_select(0, enter_l)  # [n_in_local, cols...]
        local.index_copy_(0, enter_l, torch.maximum(current, fill.to(local.device).expand_as(current)))
        warmed += enter_l.numel()
    return warmed
