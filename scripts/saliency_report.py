"""Saliency report: where the large q/k activations sit, how concentrated they are, and how stable.

Example:
    python scripts/saliency_report.py --model smollm2 --lengths 1024 4096 --samples 4 --out reports/saliency
    python scripts/saliency_report.py --model tiny_llama --lengths 256 --samples 1 --out r --run runs/X

Writes into ``--out``: ``heatmap_q_proj.png`` / ``heatmap_k_proj.png`` (log10 mean |act| per layer x channel),
``mask.png`` (the top-``ratio`` mask), ``concentration.png`` (L1 share of the top-``ratio`` channels per
layer, per prompt length), ``short_vs_long.png`` (the observation LongAct starts from: channel concentration
on the shortest vs the longest prompts of the same task), ``concentration_by_length.png`` (the same items at
every length: all, context and question tokens apart, layer 0 as a control; also printed per length), with
``--run`` also ``drift.png`` (mask drift) and ``telemetry.png`` (per-step ``mask/grad_share_kept`` and
``mask/act_l1_share_kept`` from ``metrics.csv``, against ``ratio``), and ``summary.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from longact_pl.masking.mask_metrics import jaccard, top_share  # noqa: E402
from longact_pl.masking.selection import TopK, select_units  # noqa: E402
from longact_pl.masking.targets import find_targets, head_dim_of  # noqa: E402
from longact_pl.premise.concentration import collect_split, concentration_table, niah_prompts  # noqa: E402

GROUPS = ("q_proj", "k_proj")


def load(name: str):
    """Model and tokenizer by short name, or any local HF folder / hub id."""
    if name in ("tiny_llama", "tiny_qwen3"):
        from longact_pl.models import tiny

        return getattr(tiny, name)(seed=0)
    if name == "smollm2":
        from longact_pl.models.smollm2 import load_smollm2

        return load_smollm2()
    from longact_pl.models.hf import load_hf

    return load_hf(name, dtype="float32", local_files_only=True)


def per_group(targets, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stack per-module vectors into ``[layers, channels]`` per target group."""
    return {g: torch.stack([values[t.name] for t in targets if t.group == g]) for g in GROUPS}


def low_freq_share(mask: torch.Tensor, head_dim: int) -> float:
    """Share of kept channels in the low-frequency half of RoPE dims (``d mod D/2 >= D/4``)."""
    half = head_dim // 2
    freq_idx = torch.arange(mask.numel()) % head_dim % half  # [C]; larger = lower RoPE frequency
    kept = int(mask.sum())
    return 0.0 if kept == 0 else int((mask & (freq_idx >= half // 2)).sum()) / kept


def plot_heatmaps(out: Path, mean_abs: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> list[str]:
    files = []
    for g in GROUPS:
        fig, ax = plt.subplots(figsize=(10, 0.25 * len(mean_abs[g]) + 2))
        im = ax.imshow(mean_abs[g].clamp_min(1e-8).log10().numpy(), aspect="auto", cmap="magma")
        ax.set(xlabel="output channel", ylabel="layer", title=f"{g}: log10 mean |activation|")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        fig.savefig(out / f"heatmap_{g}.png", dpi=110)
        plt.close(fig)
        files.append(f"heatmap_{g}.png")
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.25 * len(masks[GROUPS[0]]) + 2))
    for ax, g in zip(axes, GROUPS):
        ax.imshow(masks[g].float().numpy(), aspect="auto", cmap="Greys", interpolation="nearest")
        ax.set(xlabel="output channel", ylabel="layer", title=f"{g}: trained rows (black)")
    fig.tight_layout()
    fig.savefig(out / "mask.png", dpi=110)
    plt.close(fig)
    return [*files, "mask.png"]


def plot_concentration(out: Path, conc: dict[int, dict[str, list[float]]], ratio: float) -> str:
    fig, ax = plt.subplots(figsize=(8, 4))
    for length, groups in conc.items():
        for g, style in zip(GROUPS, ("-", "--")):
            ax.plot(groups[g], style, marker="o", label=f"{g} @ {length} tok")
    ax.axhline(ratio, color="grey", lw=0.8, label="uniform")
    ax.set(xlabel="layer", ylabel=f"L1 share of top {ratio:.0%} channels", ylim=(0, 1))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "concentration.png", dpi=110)
    plt.close(fig)
    return "concentration.png"


def plot_drift(out: Path, history: list[dict]) -> str:
    steps = [h["step"] for h in history if h.get("jaccard") is not None]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(
        steps, [h["jaccard"] for h in history if h.get("jaccard") is not None], marker="o", label="Jaccard"
    )
    ax.plot([h["step"] for h in history], [h["l1_share"] for h in history], marker="s", label="L1 share")
    ax.set(xlabel="optimizer step", ylim=(0, 1.05), title="mask drift during training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "drift.png", dpi=110)
    plt.close(fig)
    return "drift.png"


def plot_short_vs_long(
    out: Path,
    short: dict[str, list[torch.Tensor]],
    long: dict[str, list[torch.Tensor]],
    lengths,
    ratio: float,
) -> str:
    """Channel concentration of the same task at the shortest and the longest length (one figure).

    Left: L1 share of the top-``ratio`` channels per layer. Right: channels sorted by mean |activation|,
    each layer normalised by its largest channel, averaged over layers.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    for values, length, color in ((short, lengths[0], "tab:blue"), (long, lengths[-1], "tab:red")):
        for g, style in zip(GROUPS, ("-", "--")):
            left.plot(
                [top_share(v, ratio) for v in values[g]],
                style,
                color=color,
                marker="o",
                label=f"{g} @ {length}",
            )
            profile = torch.stack(
                [v.sort(descending=True).values / v.max().clamp_min(1e-12) for v in values[g]]
            )
            right.plot(profile.mean(0).numpy(), style, color=color, label=f"{g} @ {length}")
    left.axhline(ratio, color="grey", lw=0.8, label="uniform")
    left.set(xlabel="layer", ylabel=f"L1 share of top {ratio:.0%} channels", ylim=(0, 1))
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set(xlabel="channel rank", ylabel="mean |act| / largest (mean over layers)", yscale="log")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.suptitle(f"short ({lengths[0]} tok) vs long ({lengths[-1]} tok) prompts of the same task")
    fig.tight_layout()
    fig.savefig(out / "short_vs_long.png", dpi=110)
    plt.close(fig)
    return "short_vs_long.png"


def by_length_lines(rows: list[dict], ratio: float) -> list[str]:
    """The per-length concentration table (markdown), with each column's rise from shortest to longest."""
    cols = ("all", "context", "question", "layer0")
    out = [
        f"## Concentration by length: top {ratio:.0%} L1 share, same items at every length",
        "",
        "Layers 1+ (mean over layers), by token kind; layer 0 (all tokens) is the control: its pre-RoPE q/k "
        "depend on the token alone, so its change is a change of token mix, not of context.",
        "",
        "| length | group | all tokens | context tokens | question tokens | layer 0 (control) |",
        "|---|---|---|---|---|---|",
    ]
    out += [
        f"| {r['length']} | {r['group']} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |" for r in rows
    ]
    for g in dict.fromkeys(r["group"] for r in rows):
        mine = [r for r in rows if r["group"] == g]
        rise = {c: mine[-1][c] - mine[0][c] for c in cols}
        out.append(
            f"| rise {mine[0]['length']}->{mine[-1]['length']} | {g} | "
            + " | ".join(f"{rise[c]:+.3f}" for c in cols)
            + " |"
        )
    return out


def plot_by_length(out: Path, rows: list[dict], ratio: float) -> str:
    """Top-share against length per group: all / context / question tokens (layers 1+) and layer 0."""
    groups = list(dict.fromkeys(r["group"] for r in rows))
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.5), squeeze=False)
    for ax, g in zip(axes[0], groups):
        mine = [r for r in rows if r["group"] == g]
        for col, style in (("all", "-o"), ("context", "--s"), ("question", ":^"), ("layer0", "-.x")):
            ax.plot([r["length"] for r in mine], [r[col] for r in mine], style, label=col)
        ax.axhline(ratio, color="grey", lw=0.8)
        ax.set(xscale="log", xlabel="prompt tokens (target)", ylabel=f"top {ratio:.0%} L1 share", title=g)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "concentration_by_length.png", dpi=110)
    plt.close(fig)
    return "concentration_by_length.png"


TELEMETRY = ("mask/grad_share_kept", "mask/act_l1_share_kept", "mask/update_share_removed")


def read_telemetry(metrics_csv: Path) -> dict[str, list[tuple[int, float]]]:
    """Per-step telemetry columns of a run's ``metrics.csv`` (empty when absent)."""
    series: dict[str, list[tuple[int, float]]] = {k: [] for k in TELEMETRY}
    if not metrics_csv.is_file():
        return series
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            for key in TELEMETRY:
                if row.get(key):
                    series[key].append((int(float(row.get("step") or 0)), float(row[key])))
    return series


def plot_telemetry(out: Path, series: dict[str, list[tuple[int, float]]], ratio: float) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key, marker in zip(TELEMETRY, ("o", "s", "^")):
        if series[key]:
            ax.plot(*zip(*series[key]), marker=marker, label=key.removeprefix("mask/"))
    ax.axhline(ratio, color="grey", lw=0.8, label=f"ratio {ratio} (a random mask)")
    ax.set(xlabel="step", ylabel="share", ylim=(0, 1.05), title="does saliency matter? how big is the cut?")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "telemetry.png", dpi=110)
    plt.close(fig)
    return "telemetry.png"


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2", help="smollm2 | tiny_llama | tiny_qwen3 | HF folder")
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--samples", type=int, default=4, help="prompts per length")
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--measure-at", default="proj", choices=["proj", "norm", "post_rope"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--run", type=Path, default=None, help="training run dir with final/mask_summary.json")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    loaded = load(args.model)
    model, tok = loaded.model, loaded.tokenizer
    targets = find_targets(model, GROUPS, args.measure_at)
    head_dim = head_dim_of(model)
    groups = {g: [t.name for t in targets if t.group == g] for g in GROUPS}

    conc: dict[int, dict[str, list[float]]] = {}
    per_length: dict[int, dict[str, list[torch.Tensor]]] = {}
    masks_by_len: dict[int, dict[str, torch.Tensor]] = {}
    totals: dict[str, dict[str, torch.Tensor]] = {"mean_abs": {}, "max_abs": {}}
    source = "NIAH multikey items (longact_pl.data.tasks), the same items at every length"
    split_by_length = {}
    for length, prompts in niah_prompts(tok, args.lengths, args.samples, args.seed).items():
        split_by_length[length] = collect_split(model, targets, prompts)
        stats = split_by_length[length]["all"]
        mean_abs = {k: s.statistic("mean_abs") for k, s in stats.items()}
        for k, s in stats.items():
            totals["mean_abs"][k] = totals["mean_abs"].get(k, 0) + s.statistic("mean_abs") / len(args.lengths)
            peak = s.statistic("max_abs")  # [C]
            totals["max_abs"][k] = torch.maximum(totals["max_abs"].get(k, peak), peak)  # [C]
        conc[length] = {g: [top_share(mean_abs[n], args.ratio) for n in groups[g]] for g in GROUPS}
        per_length[length] = {g: [mean_abs[n] for n in groups[g]] for g in GROUPS}
        masks_by_len[length] = select_units(
            mean_abs, groups, TopK(), args.ratio
        )  # channel units: one per row

    masks = select_units(totals["mean_abs"], groups, TopK(), args.ratio)  # channel units: one per row
    masks_max = select_units(totals["max_abs"], groups, TopK(), args.ratio)  # channel units: one per row
    files = plot_heatmaps(args.out, per_group(targets, totals["mean_abs"]), per_group(targets, masks))
    files.append(plot_concentration(args.out, conc, args.ratio))
    lengths = sorted(per_length)
    files.append(
        plot_short_vs_long(args.out, per_length[lengths[0]], per_length[lengths[-1]], lengths, args.ratio)
    )

    lines = [
        f"# Saliency report: `{args.model}`",
        "",
        f"Prompts: {source}; lengths {args.lengths} tokens (target), {args.samples} per length; "
        f"measured at `{args.measure_at}`; ratio {args.ratio}; head_dim {head_dim}.",
        "",
        f"| layer | group | top {args.ratio:.0%} L1 share | top/median | mask vs max_abs mask (Jaccard) "
        "| kept rows in low-freq RoPE half |",
        "|---|---|---|---|---|---|",
    ]
    for g in GROUPS:
        for layer, name in enumerate(groups[g]):
            v = totals["mean_abs"][name]  # [C]
            peak = float(v.max() / v.median().clamp_min(1e-12))
            same = jaccard(masks[name], masks_max[name])
            low = low_freq_share(masks[name], head_dim)
            lines.append(
                f"| {layer} | {g} | {top_share(v, args.ratio):.3f} | {peak:.1f} | {same:.2f} | {low:.2f} |"
            )
    names = [t.name for t in targets]
    lines += [
        "",
        "## Stability across prompt lengths (Jaccard of each length's mask with the pooled mask)",
        "",
    ]
    for length, m in masks_by_len.items():
        lines.append(f"- {length} tokens: {sum(jaccard(m[n], masks[n]) for n in names) / len(names):.3f}")
    rows = concentration_table(split_by_length, targets, args.ratio, GROUPS)
    files.append(plot_by_length(args.out, rows, args.ratio))
    lines += ["", *by_length_lines(rows, args.ratio), ""]
    print("\n".join(by_length_lines(rows, args.ratio)))

    if args.run is not None:
        summary_path = next(
            (
                q
                for q in (args.run / "final" / "mask_summary.json", args.run / "mask_summary.json")
                if q.is_file()
            ),
            None,
        )
        if summary_path is None:
            lines += [f"No mask_summary.json under {args.run}.", ""]
        else:
            summary = json.loads(summary_path.read_text())
            history = summary.get("history", [])
            files.append(plot_drift(args.out, history))
            what = ", ".join(f"{k} {summary.get(k)}" for k in ("selector", "ratio", "statistic", "unit"))
            lines += ["## Drift during training", "", f"From `{summary_path}` ({what}).", ""]
            lines += ["| step | Jaccard vs previous | L1 share |", "|---|---|---|"]
            for h in history:
                jac = "-" if h.get("jaccard") is None else f"{h['jaccard']:.3f}"
                lines.append(f"| {h['step']} | {jac} | {h['l1_share']:.3f} |")
            lines.append("")
        series = read_telemetry(args.run / "metrics.csv")
        if any(series.values()):
            ratio = summary.get("ratio", args.ratio) if summary_path is not None else args.ratio
            files.append(plot_telemetry(args.out, series, ratio))
            lines += [
                "## Telemetry (per training step)",
                "",
                "| metric | first | last | mean |",
                "|---|---|---|---|",
            ]
            for key, values in series.items():
                if values:
                    vals = [v for _, v in values]
                    lines.append(f"| {key} | {vals[0]:.3f} | {vals[-1]:.3f} | {sum(vals) / len(vals):.3f} |")
            lines += ["", f"A random mask keeps about {ratio} of each; the gap is what saliency adds.", ""]
    lines += ["## Figures", ""] + [f"![{f}]({f})" for f in files]
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'summary.md'} and {len(files)} figures")
    return args.out


if __name__ == "__main__":
    main()
