"""Write ``summary.json``, the plots and ``report.md`` of a premise run from its ``items.jsonl``.

Usable on a finished or a partial run: ``python -m longact_pl.premise.report outputs/premise/<run>``.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

from longact_pl.premise.analysis import ARMS_SHOWN, arm_value, decision, m1_table, m2_table, m3_table
from longact_pl.premise.figures import plot_all


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """The per-item records of ``run_dir/items.jsonl``, M3 lines merged into their item's record.

    A torn last line of a killed run is skipped.
    """
    out: dict[int, dict[str, Any]] = {}
    for line in (run_dir / "items.jsonl").read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "m3_of" in rec:
            item = out[int(rec["m3_of"])]
            item["m3"] = rec["m3"]
            item["seconds"] += rec["seconds"]
        else:
            out[int(rec["index"])] = rec
    return list(out.values())


def flat_row(r: dict[str, Any]) -> dict[str, Any]:
    """One item as flat columns (M1 shares, M2 gains, M3 NLL changes; random arms as their mean)."""
    row: dict[str, Any] = {k: r.get(k) for k in ("index", "role", "seed", "answer")}
    for length in ("short", "long"):
        row[f"tokens_{length}"], row[f"nll_{length}"] = r["tokens"][length], r["nll"][length]
    row["cos_long_short"] = r["cos_long_short"]
    for key, shares in r["m1"].items():
        for arm in ("mask", "random", "inverse"):
            row[f"m1_{key}_{arm}"] = arm_value(shares, arm)
    for length, by_norm in r.get("m2", {}).items():
        for norm, gains in by_norm.items():
            for arm in ("mask", "random", "inverse", "all"):
                row[f"m2_{norm}_{length}_{arm}"] = arm_value(gains, arm)
    for arm, by_lr in r.get("m3", {}).get("delta_nll", {}).items():
        for lr, by_len in by_lr.items():
            for length, v in by_len.items():
                row[f"m3_{arm}_lr{lr}_{length}"] = v
    row["seconds"] = r["seconds"]
    return row


def write_csv(path: Path, records: list[dict[str, Any]]) -> None:
    """``items.csv``: :func:`flat_row` of every record (columns: the union, in first-seen order)."""
    rows = [flat_row(r) for r in records]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _fmt(c: dict[str, float] | None, digits: int = 3) -> str:
    if c is None:
        return "-"
    return f"{c['mean']:.{digits}f} [{c['lo']:.{digits}f}, {c['hi']:.{digits}f}]"


def _sci(c: dict[str, float] | None) -> str:
    if c is None:
        return "-"
    return f"{c['mean']:.3g} [{c['lo']:.3g}, {c['hi']:.3g}]"


def _m1_md(m1: dict[str, Any]) -> list[str]:
    lines = [
        "| gradient | mask | random (mean of K) | inverse | mask - random | MDE | mask - inverse |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label in (("short", "short"), ("long", "long"), ("diff", "long - short")):
        c = m1[key]
        lines.append(
            f"| {label} | {_fmt(c['mask'])} | {_fmt(c['random'])} | {_fmt(c['inverse'])} | "
            f"{_fmt(c['mask-random'])} | {c['mask-random']['mde']:.3f} | {_fmt(c['mask-inverse'])} |"
        )
    le = m1["length_effect"]
    lines += [
        "",
        f"- Length effect, mask share long minus short (per item): {_fmt(le['mask'])} "
        f"(MDE {le['mask']['mde']:.3f}); of (mask - random): {_fmt(le['mask-random'])}; mask share of the "
        f"long-specific part minus of the short gradient: {_fmt(le['diff-short'])}.",
        f"- Checks: `all` share {_fmt(m1['long']['all'])} (must be 1), mask + complement "
        f"{_fmt(m1['long']['mask+complement'])} (must be 1).",
        f"- cos(g_long, g_short): {_fmt(m1['cos_long_short'])}.",
    ]
    return lines


def _m2_md(m2: dict[str, Any]) -> list[str]:
    if not m2:
        return ["No held-out item finished: no M2."]
    lines = [
        "| normalisation / length | " + " | ".join(ARMS_SHOWN) + " | mask - random | MDE | mask - inverse |",
        "|---|" + "---|" * (len(ARMS_SHOWN) + 3),
    ]
    for key, c in m2.items():
        arms = " | ".join(_sci(c[a]) for a in ARMS_SHOWN)
        lines.append(
            f"| {key} | {arms} | {_sci(c['mask-random'])} | {c['mask-random']['mde']:.3g} | "
            f"{_sci(c['mask-inverse'])} |"
        )
    return lines


def _m3_md(m3: dict[str, Any]) -> list[str]:
    if not m3:
        return ["No item got the real step: no M3."]
    lines = [
        "| lr / length | mask | random_0 | inverse | mask - random_0 | mask - inverse |",
        "|---|---|---|---|---|---|",
    ]
    for key, c in m3.items():
        lines.append(
            f"| {key} | {_sci(c.get('mask'))} | {_sci(c.get('random_0'))} | {_sci(c.get('inverse'))} | "
            f"{_sci(c.get('mask-random_0'))} | {_sci(c.get('mask-inverse'))} |"
        )
    return lines


def write_report(run_dir: str | Path) -> dict[str, Any]:
    """Analyse ``run_dir/items.jsonl`` (with ``meta.json``) into ``summary.json``, plots and ``report.md``.

    Returns:
        The summary.

    Raises:
        ValueError: If the run has fewer than 2 finished items.
    """
    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "meta.json").read_text())
    records = read_records(run_dir)
    if len(records) < 2:
        raise ValueError(f"{run_dir}: {len(records)} finished item(s); the report needs at least 2")
    opts = meta["options"]
    n_boot = int(opts["n_boot"])
    m1, m2, m3 = m1_table(records, n_boot), m2_table(records, n_boot), m3_table(records, n_boot)
    line, tests = decision(m1, m2)
    target = float(opts["target_half_width"])
    hw = max(m1["long"]["mask"]["half_width"], m1["diff"]["mask-random"]["half_width"])
    held = sum(r["role"] == "heldout" for r in records)
    summary = {
        "items_done": len(records),
        "items_planned": opts["items"],
        "heldout_done": held,
        "m3_done": sum("m3" in r for r in records),
        "seconds": sum(r["seconds"] for r in records),
        "m1_half_width": hw,
        "target_half_width": target,
        "decision": line,
        "tests": tests,
        "m1": m1,
        "m2": m2,
        "m3": m3,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_csv(run_dir / "items.csv", records)
    ratio = float(meta["masking"]["ratio"])
    plots = plot_all(run_dir, m1, m2, m3, ratio)
    partial = len(records) < int(opts["items"])
    md = [
        "# LongAct premise measurement",
        "",
        f"**Decision:** {line}",
        "",
        f"- Items: {len(records)} of {opts['items']} planned"
        + (" (PARTIAL RUN)" if partial else "")
        + f"; {held} held out, {summary['m3_done']} with the real step; lengths {opts['lengths']}.",
        f"- Mask under test: {meta['masking']['selector']} ratio {ratio}, unit {meta['masking']['unit']}, "
        f"statistic {meta['masking']['statistic']}, measured at {meta['masking']['measure_at']}; "
        f"{opts['random_masks']} random masks; kept rows {meta['arms']['kept_rows']['mask']} of "
        f"{meta['arms']['rows']}.",
        f"- M1 interval half-width reached: {hw:.3f} (design target {target}): "
        + ("reached." if hw <= target else "NOT reached."),
        f"- Compute: {meta['device']}, {meta['torch_threads']} thread(s), precision {opts['precision']}, "
        f"{summary['seconds'] / 60:.1f} min for the items.",
        "",
        "Values: mean over items [95% paired bootstrap interval]; MDE = smallest difference the design "
        "detects at 80% power.",
        "",
        "## M1: share of the answer-NLL gradient's squared norm in the arm's rows",
        "",
        *_m1_md(m1),
        "",
        "## M2: first-order NLL decrease per unit step of an update built from the build items' long "
        "gradients (held-out items)",
        "",
        *_m2_md(m2),
        "",
        "## M3: held-out answer NLL change after the real masked step (sign update, lr per entry)",
        "",
        *_m3_md(m3),
        "",
        *[f"![{p}]({p})" for p in plots],
        "",
    ]
    (run_dir / "report.md").write_text("\n".join(md))
    return summary


def main(argv: list[str] | None = None) -> None:
    """``python -m longact_pl.premise.report <run dir>``: (re)write a finished or partial run's report."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m longact_pl.premise.report <run dir holding items.jsonl>")
    summary = write_report(args[0])
    print(summary["decision"])


if __name__ == "__main__":
    main()
