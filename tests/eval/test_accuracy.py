"""TaskLengthAccuracy: per-cell means, RULER-style averages, DDP-style state merging, clear errors."""

import pytest
import torch

from longact_pl.data.sources import GeneratedSource, JsonlSource
from longact_pl.data.tasks.mixture import TaskMixture
from longact_pl.data.tasks.niah import NeedleInAHaystack
from longact_pl.data.tasks.words import FrequentWords
from longact_pl.eval.accuracy import TaskLengthAccuracy, source_task_names, task_names

TASKS, LENGTHS = ["niah", "vt", "qa"], [512, 1024]
# (task, length, score) updates in two batches; qa is never seen at 1024
BATCH_1 = [("niah", 512, 1.0), ("niah", 512, 0.0), ("vt", 512, 0.5), ("niah", 1024, 1.0)]
BATCH_2 = [("vt", 1024, 0.25), ("vt", 1024, 0.75), ("qa", 512, 1.0), ("niah", 1024, 0.0), ("vt", 512, 1.0)]


def _update(metric, batch):
    tasks, lengths, scores = zip(*batch)
    metric.update(list(tasks), list(lengths), torch.tensor(scores))


def _direct(rows):
    cells = {}
    for t, n, s in rows:
        cells.setdefault((t, n), []).append(s)
    out = {f"acc/{t}/{n}": sum(v) / len(v) for (t, n), v in cells.items()}
    per_length = {}
    for n in LENGTHS:
        means = [sum(v) / len(v) for (t, m), v in cells.items() if m == n]
        per_length[n] = sum(means) / len(means)
        out[f"acc/{n}"] = per_length[n]
    out["acc"] = sum(per_length.values()) / len(per_length)
    return out


def test_compute_equals_direct_computation():
    metric = TaskLengthAccuracy(TASKS, LENGTHS)
    _update(metric, BATCH_1)
    _update(metric, BATCH_2)
    got = {k: float(v) for k, v in metric.compute().items()}
    want = _direct(BATCH_1 + BATCH_2)
    assert got.keys() == want.keys() and "acc/qa/1024" not in got
    for k in want:
        assert got[k] == pytest.approx(want[k]), k
    # hand values: niah@512 = 0.5, vt@512 = 0.75, qa@512 = 1 -> 0.75; niah@1024 = 0.5, vt@1024 = 0.5 -> 0.5
    assert got["acc/512"] == pytest.approx(0.75) and got["acc/1024"] == pytest.approx(0.5)
    assert got["acc"] == pytest.approx(0.625)


def test_two_ranks_merged_equal_one_metric_over_all_updates():
    rank0, rank1, single = (TaskLengthAccuracy(TASKS, LENGTHS) for _ in range(3))
    _update(rank0, BATCH_1)
    _update(rank1, BATCH_2)
    _update(single, BATCH_1 + BATCH_2)
    # what DDP's dist_reduce_fx="sum" does: the states add up
    assert torch.equal(rank0.total + rank1.total, single.total)
    assert torch.equal(rank0.count + rank1.count, single.count)
    rank0.merge_state(rank1)
    merged, want = rank0.compute(), single.compute()
    assert merged.keys() == want.keys()
    assert all(torch.allclose(merged[k], want[k]) for k in want)


def test_unknown_task_or_length_is_a_clear_error_and_bucketing_is_opt_in():
    metric = TaskLengthAccuracy(TASKS, LENGTHS)
    with pytest.raises(ValueError, match=r"task\(s\) \['fwe'\] are not among"):
        metric.update(["fwe"], [512], torch.tensor([1.0]))
    with pytest.raises(ValueError, match="length 700 is not one of"):
        metric.update(["vt"], [700], torch.tensor([1.0]))
    with pytest.raises(ValueError, match="one of each per sample"):
        metric.update(["vt", "qa"], [512], torch.tensor([1.0]))
    bucketed = TaskLengthAccuracy(TASKS, LENGTHS, bucket_lengths=True)
    bucketed.update(["vt", "vt", "vt"], [300, 700, 5000], torch.tensor([1.0, 0.0, 0.5]))
    out = bucketed.compute()
    assert float(out["acc/vt/512"]) == 1.0 and float(out["acc/vt/1024"]) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="duplicated"):
        TaskLengthAccuracy(["a", "a"], [1])


def test_task_names_of_a_task_and_of_a_mixture():
    assert task_names(NeedleInAHaystack(num_keys=4)) == ["niah_multikey"]
    mix = TaskMixture([NeedleInAHaystack(), FrequentWords(), NeedleInAHaystack(name="niah_single")])
    assert task_names(mix) == ["niah_single", "fwe"]


def test_source_task_names_of_generated_and_file_sources(tmp_path):
    mix = TaskMixture([NeedleInAHaystack(num_keys=4), FrequentWords()])
    assert source_task_names(GeneratedSource(mix, 10, [256], seed=0)) == ["niah_multikey", "fwe"]
    path = tmp_path / "val.jsonl"
    path.write_text('{"prompt": "a", "answer": "b", "task": "t2"}\n{"prompt": "c", "answer": "d"}\n')
    assert source_task_names(JsonlSource(str(path))) == ["t2", "val"]
