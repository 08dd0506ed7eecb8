"""Per-prompt validation records: rows, gathering across ranks, and the files a training run writes."""

import csv
import json

import pytest
import torch

from longact_pl.eval.val_records import ValRecords, prompt_id, prompt_sha, read_step, step_of
from longact_pl.train import run
from tests.helpers import compose_train


def _record(index: int, task: str = "niah", length: int = 512, padding: bool = False) -> dict:
    rec = {"prompt_ids": [index, 7, 9], "references": [str(index)], "task": task, "target_length": length,
           "truncated": False, "index": index}  # fmt: skip
    return {**rec, "padding": True} if padding else rec


def test_rows_skip_padding_and_name_prompts_stably():
    records = ValRecords("unused")
    recs = [_record(3), _record(1, padding=True), _record(0, task="vt", length=2048)]
    records.add(5, recs, ["a", "pad", "c"], torch.tensor([1.0, 0.5, 0.25]))
    assert [r["id"] for r in records.rows] == ["niah/512/3", "vt/2048/0"]
    assert [r["score"] for r in records.rows] == [1.0, 0.25]
    assert records.rows[0]["completion"] == "a" and records.rows[0]["step"] == 5
    assert records.rows[0]["prompt_sha"] == prompt_sha([3, 7, 9]) != prompt_sha([0, 7, 9])
    assert prompt_id(recs[0]) == "niah/512/3"
    with pytest.raises(ValueError, match="one completion and one score per record"):
        records.add(5, recs, ["a"], torch.tensor([1.0, 0.5, 0.25]))


def test_write_gathers_every_rank_sorted_by_index_on_the_main_rank_only(tmp_path):
    rank0, rank1 = ValRecords(tmp_path / "preds"), ValRecords(tmp_path / "preds")
    rank0.add(4, [_record(0), _record(2)], ["x", "y"], torch.tensor([1.0, 0.0]))
    rank1.add(4, [_record(1), _record(0, padding=True)], ["z", "pad"], torch.tensor([0.5, 1.0]))
    both = [list(rank0.rows), list(rank1.rows)]
    assert rank1.write(4, lambda rows: both, is_main=False) is None
    assert not (tmp_path / "preds").exists()  # only the main rank writes
    path = rank0.write(4, lambda rows: both, is_main=True)
    assert path == tmp_path / "preds" / "step_4.jsonl" and step_of(path) == 4
    rows = read_step(path)
    assert [(r["index"], r["score"]) for r in rows] == [(0, 1.0), (1, 0.5), (2, 0.0)]
    assert rank0.rows == [] and not list((tmp_path / "preds").glob("*.tmp"))


def test_write_keeps_one_row_per_prompt_when_a_sequence_parallel_group_scored_it_twice(tmp_path):
    # ranks 0 and 1 form one sequence-parallel group (the same prompts), rank 2 another
    ranks = [ValRecords(tmp_path / "preds") for _ in range(3)]
    ranks[0].add(2, [_record(0), _record(2)], ["a", "c"], torch.tensor([1.0, 0.0]))
    ranks[1].add(2, [_record(0), _record(2)], ["a", "c"], torch.tensor([1.0, 0.0]))
    ranks[2].add(2, [_record(1)], ["b"], torch.tensor([0.5]))
    parts = [list(r.rows) for r in ranks]
    rows = read_step(ranks[0].write(2, lambda rows: parts, is_main=True))
    assert [(r["index"], r["completion"]) for r in rows] == [(0, "a"), (1, "b"), (2, "c")]


def test_read_step_names_a_bad_line(tmp_path):
    path = tmp_path / "step_0.jsonl"
    path.write_text(json.dumps({"id": "a", "score": 1.0}) + "\n" + json.dumps({"id": "b"}) + "\n")
    with pytest.raises(ValueError, match=r"step_0.jsonl:2: .*'score'"):
        read_step(path)
    with pytest.raises(ValueError, match="step_<k>.jsonl"):
        step_of(tmp_path / "final.jsonl")


def test_training_run_writes_one_row_per_heldout_prompt_per_validation(tmp_path):
    cfg = compose_train(
        tmp_path, "data.reward._target_=tests.helpers.ParityReward", "validate_before_training=true",
        "trainer.max_steps=2", "trainer.val_check_interval=1", "data.val.num_samples=4",
        "data.val.lengths=[128,256]", "callbacks.model_checkpoint.save_last=false",
    )  # fmt: skip
    run(cfg, tmp_path)
    files = sorted((tmp_path / "val_predictions").glob("step_*.jsonl"), key=step_of)
    assert [step_of(f) for f in files] == [0, 1, 2]
    with open(tmp_path / "metrics.csv") as f:
        accs = [float(r["val/acc"]) for r in csv.DictReader(f) if r.get("val/acc")]
    for path, acc in zip(files, accs, strict=True):
        rows = read_step(path)
        assert [r["index"] for r in rows] == [0, 1, 2, 3]
        assert {r["target_length"] for r in rows} == {128, 256}
        # val/acc is the mean of the per-length means; each length holds 2 of the 4 prompts
        assert sum(r["score"] for r in rows) / 4 == pytest.approx(acc)
    # the same held-out prompts at every pass
    assert len({tuple(r["prompt_sha"] for r in read_step(f)) for f in files}) == 1


def test_validating_before_training_leaves_the_training_bit_identical(tmp_path):
    """Step 0 may be validated in one run of a multirun and lent to the others: training is unchanged."""
    from safetensors.torch import load_file

    weights = {}
    for flag in ("true", "false"):
        run_dir = tmp_path / flag
        cfg = compose_train(
            run_dir, "data.reward._target_=tests.helpers.ParityReward", f"validate_before_training={flag}",
            "callbacks.model_checkpoint.save_last=false",
        )  # fmt: skip
        run(cfg, run_dir)
        weights[flag] = load_file(run_dir / "final" / "model.safetensors")
    assert (tmp_path / "true" / "val_predictions" / "step_0.jsonl").is_file()
    assert not (tmp_path / "false" / "val_predictions" / "step_0.jsonl").exists()
    assert weights["true"].keys() == weights["false"].keys()
    assert all(torch.equal(weights["true"][k], weights["false"][k]) for k in weights["true"])
