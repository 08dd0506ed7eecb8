"""Run the premise measurement: calibrate the masks, walk the items, write one JSON line per item.

Order (so a run cut short keeps every finished item, and the costly M3 comes last): calibration prompts at
the long length build the arms (``premise/arms.py``); the build items' long gradients are averaged into ``G``
(M1 recorded per item); each held-out item gets M1 and M2 (gains of every arm's update built from ``G``);
then the first ``m3_items`` held-out items get M3 (the real step applied, the answer NLL re-measured at both
lengths, the weights restored), each as a line ``{"m3_of": index, "m3": ...}``.
``items.jsonl`` is appended and flushed after every item; ``report.md`` is written from it at the end (or
later with ``python -m longact_pl.premise.report <run dir>``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from longact_pl.premise.arms import build_arms, random_arms
from longact_pl.premise.grads import RowSpace, freeze_all_but, nll, nll_and_grad
from longact_pl.premise.items import PairedItem, paired_item
from longact_pl.premise.measures import Direction, cosine, row_sq, share
from longact_pl.premise.options import PremiseOptions
from longact_pl.premise.report import write_report

log = logging.getLogger(__name__)

ITEMS_FILE = "items.jsonl"
META_FILE = "meta.json"
M3_ARMS = ("mask", "random_0", "inverse")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("premise.device=cuda but no CUDA device is visible; use premise.device=auto or cpu")
    return torch.device(name)


def _m1(grads: dict[str, torch.Tensor], arms: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Share of each gradient's squared norm in every arm's rows."""
    out = {}
    for key, g in grads.items():
        rows = row_sq(g)  # [R]
        out[key] = {arm: share(rows, m) for arm, m in arms.items()}
    return out


def _measure_item(
    model, space: RowSpace, item: PairedItem, opts: PremiseOptions, arms, bf16: bool
) -> tuple[dict[str, Any], tuple[torch.Tensor, torch.Tensor]]:
    """NLL, gradients, M1 and cosine of one item: the record and the ``[R, in]`` short and long gradients."""
    short, long = item.lengths[opts.short], item.lengths[opts.long]
    nll_s, g_s = nll_and_grad(model, space, short.ids, short.n_answer, bf16)  # g: [R, in]
    nll_l, g_l = nll_and_grad(model, space, long.ids, long.n_answer, bf16)  # [R, in]
    record = {
        "seed": item.seed,
        "answer": item.answer,
        "tokens": {"short": len(short.ids), "long": len(long.ids)},
        "nll": {"short": nll_s, "long": nll_l},
        "grad_sq": {"short": float(row_sq(g_s).sum()), "long": float(row_sq(g_l).sum())},
        "cos_long_short": cosine(g_l, g_s),
        "m1": _m1({"short": g_s, "long": g_l, "diff": g_l - g_s}, arms),
    }
    return record, (g_s, g_l)


def _m3(model, space: RowSpace, item: PairedItem, opts, direction: Direction, arms, bf16: bool) -> dict:
    """Answer NLL change at both lengths after the real masked step, per arm and learning rate."""
    base = space.weights()  # [R, in] exact copy to restore
    lens = {"short": item.lengths[opts.short], "long": item.lengths[opts.long]}
    before = {k: nll(model, r.ids, r.n_answer, bf16) for k, r in lens.items()}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for arm in M3_ARMS:
        out[arm] = {}
        for lr in opts.m3_lrs:
            space.add_(direction.step(arms[arm], "sign", lr))
            after = {k: nll(model, r.ids, r.n_answer, bf16) for k, r in lens.items()}
            space.set_(base)
            out[arm][repr(lr)] = {k: after[k] - before[k] for k in lens}
    return {"nll_before": before, "delta_nll": out}


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Measure the premise on ``cfg.model`` with ``cfg.masking``'s mask; write into ``out_dir``.

    Returns:
        The report's summary (also in ``out_dir/summary.json``).

    Raises:
        ValueError: On invalid options (before anything heavy is loaded) or a masking group without a mask.
    """
    opts = PremiseOptions.from_mapping(OmegaConf.to_container(cfg.premise, resolve=True))
    if "_target_" not in cfg.masking:
        raise ValueError(
            "premise needs a mask to measure: use masking=saliency (or random / inverse), not none"
        )
    if opts.threads:
        torch.set_num_threads(opts.threads)
    device, bf16 = _device(opts.device), opts.precision == "bf16"
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / ITEMS_FILE).exists():
        raise FileExistsError(f"{out_dir / ITEMS_FILE} exists; choose another hydra.run.dir")
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    callback = instantiate(cfg.masking)
    task = instantiate(cfg.data.train.task)
    system_prompt = cfg.data.get("system_prompt")
    loaded = instantiate(cfg.model)
    model, tokenizer = loaded.model.to(device), loaded.tokenizer
    model.eval()
    builder = callback.check_model(model)
    space = RowSpace(builder.targets)
    freeze_all_but(model, space.params())

    t0 = time.time()
    calib = [
        paired_item(task, tokenizer, opts.calib_seed + i, [opts.long], system_prompt).lengths[opts.long]
        for i in range(callback.options.calib_samples)
    ]
    prompts = [r.ids[: r.prompt_tokens] for r in calib]
    arms, mask_summary = build_arms(model, builder, prompts, opts.random_masks, int(cfg.seed), bf16)
    meta = {
        "options": {**opts.__dict__, "lengths": list(opts.lengths), "m3_lrs": list(opts.m3_lrs)},
        "masking": callback.options.as_dict(),
        "arms": mask_summary,
        "targets": [t.name for t in builder.targets],
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "calib_seconds": time.time() - t0,
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    log.info("premise: masks built in %.1f s (%s)", meta["calib_seconds"], mask_summary["kept_rows"])

    m2_arms = {a: m for a, m in arms.items() if a != "complement"}
    G = torch.zeros(space.rows, space.width, device=device)  # [R, in] sum of build items' long gradients
    direction: Direction | None = None
    with (out_dir / ITEMS_FILE).open("a") as f:
        for i in range(opts.items):
            start = time.time()
            role = "build" if i < opts.build_items else "heldout"
            item = paired_item(task, tokenizer, opts.item_seed + i, opts.lengths, system_prompt)
            record, (g_s, g_l) = _measure_item(model, space, item, opts, arms, bf16)
            record = {"index": i, "role": role, **record}
            if role == "build":
                G += g_l
            else:
                if direction is None:
                    direction = Direction(G / opts.build_items)
                record["m2"] = {"short": direction.gains(g_s, m2_arms), "long": direction.gains(g_l, m2_arms)}
            record["seconds"] = time.time() - start
            _append(f, record)
            log.info(
                "premise: item %d/%d (%s) %.1f s, M1 long-specific mask %.3f random_0 %.3f",
                i + 1, opts.items, role, record["seconds"], record["m1"]["diff"]["mask"],
                record["m1"]["diff"][random_arms(arms)[0]],
            )  # fmt: skip
        assert direction is not None  # build_items < items
        for i in range(opts.build_items, opts.build_items + opts.m3_items):
            start = time.time()
            item = paired_item(task, tokenizer, opts.item_seed + i, opts.lengths, system_prompt)
            m3 = _m3(model, space, item, opts, direction, arms, bf16)
            _append(f, {"m3_of": i, "m3": m3, "seconds": time.time() - start})
            log.info("premise: M3 of item %d done in %.1f s", i + 1, time.time() - start)
    return write_report(out_dir)


def _append(f, record: dict[str, Any]) -> None:
    """Write one JSON line and flush it (a killed run keeps every finished line)."""
    f.write(json.dumps(record) + "\n")
    f.flush()
