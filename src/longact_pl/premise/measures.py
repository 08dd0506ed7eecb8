"""The premise measures as pure functions of gradients in the stacked row space (``premise/grads.py``).

* M1, :func:`share`: the share of a gradient's squared norm that lies in a mask's rows (``1`` for a mask
  holding every row, ``1 - share(m)`` for the complement ``~m``, about ``ratio`` for a random mask).
* M2, :func:`gains`: the first-order effect of a masked update built from a direction ``G`` (the mean
  long-context gradient of the build items) on a held-out gradient ``g``: the update is ``-eta * d`` with
  ``d`` the masked direction at unit norm, so the held-out NLL changes by ``-eta * <g, d>`` to first order;
  the *gain* ``<g, d>`` (NLL decrease per unit step norm) is reported. Two normalisations of the direction:
  ``unit`` (``d = m * G / ||m * G||``, a plain gradient step) and ``sign``
  (``d = m * sign(G) / ||m * sign(G)||``, an Adam-like first step, every kept entry moved by the same
  amount). A zero ``G`` or an empty mask has no direction; its gain is 0.
* M3, :func:`masked_step`: the real update applied to the weights (``sign``: ``-lr`` per kept entry, as
  Adam's first step; ``unit``: ``-lr * d``).

Everything works per row first (``[R]`` squared norms and dot products), so any number of masks costs a
masked sum each.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

NORMALISATIONS = ("unit", "sign")


def row_sq(g: Tensor) -> Tensor:
    """Squared norm of every row (``[R, in]`` -> ``[R]``)."""
    return g.float().square().sum(1)  # [R]


def share(rows: Tensor, mask: Tensor) -> float:
    """Share of ``rows.sum()`` on the kept rows (0 when the total is 0).

    Args:
        rows: Per-row squared norms.  # [R]
        mask: Kept rows.  # [R] bool
    """
    total = float(rows.sum())
    return 0.0 if total == 0.0 else float(rows[mask.to(rows.device)].sum()) / total


def cosine(a: Tensor, b: Tensor) -> float:
    """Cosine of two ``[R, in]`` gradients (0 when one is zero)."""
    na, nb = float(a.float().norm()), float(b.float().norm())
    return 0.0 if na == 0.0 or nb == 0.0 else float((a.float() * b.float()).sum()) / (na * nb)


class Direction:
    """Per-row pieces of a masked update direction built from ``G``, for both normalisations.

    Args:
        G: The update's source gradient (mean long-context gradient of the build items).  # [R, in]
    """

    def __init__(self, G: Tensor) -> None:
        self.G = G.float()  # [R, in]
        self.sign = torch.sign(self.G)  # [R, in]
        self.norm_rows = {
            "unit": row_sq(self.G),  # [R]
            "sign": (self.G != 0).sum(1).float(),  # [R] entries moved per row
        }

    def gains(self, g: Tensor, masks: Mapping[str, Tensor]) -> dict[str, dict[str, float]]:
        """First-order NLL decrease per unit step norm of every mask's update on a held-out gradient ``g``.

        Args:
            g: Held-out gradient.  # [R, in]
            masks: Arm name -> kept rows.  # [R] bool each

        Returns:
            Normalisation -> arm -> ``<g, d>``.
        """
        g = g.float()
        dots = {"unit": (g * self.G).sum(1), "sign": (g * self.sign).sum(1)}  # [R] each
        out: dict[str, dict[str, float]] = {}
        for norm in NORMALISATIONS:
            out[norm] = {}
            for arm, m in masks.items():
                m = m.to(g.device)
                den = float(self.norm_rows[norm][m].sum())
                out[norm][arm] = 0.0 if den == 0.0 else float(dots[norm][m].sum()) / den**0.5
        return out

    def step(self, mask: Tensor, normalisation: str, size: float) -> Tensor:
        """The ``[R, in]`` update applied to the weights (M3): see :func:`masked_step`."""
        return masked_step(self.G, mask, normalisation, size)


def masked_step(G: Tensor, mask: Tensor, normalisation: str, size: float) -> Tensor:
    """The masked descent update of a real step.

    Args:
        G: Source gradient.  # [R, in]
        mask: Kept rows.  # [R] bool
        normalisation: ``sign`` (``-size * sign(G)`` on kept rows: Adam's first step at lr ``size``) or
            ``unit`` (``-size * d``, ``d`` the unit-norm masked gradient).
        size: Learning rate (``sign``) or step norm (``unit``).

    Raises:
        ValueError: On an unknown normalisation.
    """
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"premise: normalisation={normalisation!r}; use one of {list(NORMALISATIONS)}")
    keep = mask.to(G.device)[:, None].float()  # [R, 1]
    if normalisation == "sign":
        return -size * keep * torch.sign(G.float())  # [R, in]
    d = keep * G.float()  # [R, in]
    n = float(d.norm())
    return torch.zeros_like(d) if n == 0.0 else -size * d / n  # [R, in]
