"""The report's figures: M1 shares, M2 gains and M3 NLL changes per arm, with 95% intervals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"mask": "tab:red", "random": "tab:gray", "random_0": "tab:gray", "inverse": "tab:blue", "all": "k"}


def _bars(ax, cells: dict[str, dict[str, Any]], groups: list[str], arms: list[str]) -> None:
    """Grouped bars (one group per key of ``cells``, one bar per arm) with interval whiskers."""
    width = 0.8 / len(arms)
    for j, arm in enumerate(arms):
        xs, ys, lo, hi = [], [], [], []
        for i, g in enumerate(groups):
            c = cells[g].get(arm)
            if c is None:
                continue
            xs.append(i + (j - (len(arms) - 1) / 2) * width)
            ys.append(c["mean"])
            lo.append(c["mean"] - c["lo"])
            hi.append(c["hi"] - c["mean"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=arm, color=COLORS.get(arm, "tab:green"))
    ax.set_xticks(range(len(groups)), groups)
    ax.axhline(0, color="k", lw=0.5)


def plot_all(
    out_dir: Path, m1: dict[str, Any], m2: dict[str, Any], m3: dict[str, Any], ratio: float
) -> list[str]:
    """Write ``m1.png``, ``m2.png`` and ``m3.png`` (those with data); return their file names."""
    written = []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    _bars(ax, m1, ["short", "long", "diff"], ["mask", "random", "inverse"])
    ax.axhline(ratio, color="tab:gray", ls=":", lw=1)
    ax.set_ylabel("share of squared gradient norm")
    ax.set_title("M1: gradient share in the arm's rows (diff = long - short)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "m1.png", dpi=110)
    plt.close(fig)
    written.append("m1.png")
    if m2:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for ax, norm in zip(axes, ("sign", "unit")):
            cells = {length: m2[f"{norm}/{length}"] for length in ("long", "short")}
            _bars(ax, cells, ["long", "short"], ["mask", "random", "inverse", "all"])
            ax.set_title(f"M2 ({norm}): first-order NLL decrease per unit step")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "m2.png", dpi=110)
        plt.close(fig)
        written.append("m2.png")
    if m3:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        keys = list(m3)
        _bars(ax, m3, keys, ["mask", "random_0", "inverse"])
        ax.set_xticks(range(len(keys)), [k.replace("/", "\n") for k in keys], fontsize=7)
        ax.set_ylabel("NLL after - before")
        ax.set_title("M3: held-out answer NLL change after the real step")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "m3.png", dpi=110)
        plt.close(fig)
        written.append("m3.png")
    return written
