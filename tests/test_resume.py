"""Nothing lost on a kill and a resume: the metrics history, the exit code, the run directory."""

import csv
import re
import shutil
from pathlib import Path

import pytest
import torch

from longact_pl.train import check_config, run
from tests.helpers import compose_train

PARITY = "data.reward._target_=tests.helpers.ParityReward"
SIGTERM_AT = ["+callbacks.sigterm._target_=tests.helpers.SigtermAt"]
TIMING = {"train/tokens_per_s"}  # the only logged value that is not deterministic


def _rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def _scalars(run_dir, tag):
    """``(step, value)`` of a TensorBoard tag as TensorBoard shows it (stale events of a resume purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_kill_and_resume_equals_the_uninterrupted_run(tmp_path):
    """SIGTERM after step 3 exits 143 with a checkpoint; resuming from the step-2 checkpoint (as after a hard
    kill: step 3's rows are logged again) leaves metrics.csv and TensorBoard equal to an uninterrupted run."""
    common = [PARITY, "logger=tensorboard", "trainer.max_steps=4", "trainer.val_check_interval=2",
              "validate_before_training=true", "callbacks.model_checkpoint.every_n_train_steps=1",
              "callbacks.model_checkpoint.save_top_k=-1"]  # fmt: skip
    full, part = tmp_path / "full", tmp_path / "part"
    run(compose_train(full, *common), full)
    with pytest.raises(SystemExit) as stop:
        run(compose_train(part, *common, *SIGTERM_AT, "+callbacks.sigterm.step=3"), part)
    assert stop.value.code == 143
    last = torch.load(part / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 3
    killed = _rows(part)
    assert [r["step"] for r in killed if r["train/reward_mean"]] == ["0", "1", "2"]
    ckpt = part / "checkpoints" / "epoch=0-step=2.ckpt"
    run(compose_train(part, *common, f"ckpt_path='{ckpt}'"), part)
    rows = _rows(part)
    assert rows == _rows(full)
    assert len([r for r in rows if r["train/reward_mean"]]) == 4 and any(r["val/acc"] for r in rows)
    for tag in ("train/reward_mean", "train/loss", "val/acc"):
        assert _scalars(part, tag) == _scalars(full, tag), tag
    assert len(_scalars(part, "train/reward_mean")) == 4


def test_sigterm_exit_code_is_configurable(tmp_path):
    with pytest.raises(SystemExit) as stop:
        run(compose_train(tmp_path, PARITY, "sigterm_exit_code=75", *SIGTERM_AT, "+callbacks.sigterm.step=1"),
            tmp_path)  # fmt: skip
    assert stop.value.code == 75
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 1


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-step run (config.yaml, metrics.csv, checkpoints/last.ckpt, final/)."""
    run_dir = tmp_path_factory.mktemp("finished")
    run(compose_train(run_dir, PARITY), run_dir)
    return run_dir


def _copy(finished, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    return run_dir, {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}


def test_resuming_a_finished_run_keeps_its_metrics(finished, tmp_path, monkeypatch):
    """...and reads the checkpoint twice in all: its metadata once for every check (mmap, no tensor read),
    then the whole of it once, by Lightning's restore (at 8B a checkpoint is tens of GB)."""
    run_dir, _ = _copy(finished, tmp_path)
    before = _rows(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    loads, torch_load = [], torch.load

    def counted_load(f, *args, **kwargs):
        name = f if isinstance(f, (str, Path)) else getattr(f, "path", None) or getattr(f, "name", None)
        this = isinstance(name, (str, Path)) and Path(name).resolve() == last.resolve()
        loads.append((this, bool(kwargs.get("mmap"))))
        return torch_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counted_load)
    run(compose_train(run_dir, PARITY, f"ckpt_path={last}"), run_dir)
    assert [mmap for this, mmap in loads if this] == [True, False]
    assert _rows(run_dir) == before and len([r for r in before if r["train/reward_mean"]]) == 2


def test_missing_checkpoint_fails_before_the_run_directory_is_touched(finished, tmp_path):
    run_dir, files = _copy(finished, tmp_path)
    typo = run_dir / "checkpoints" / "lats.ckpt"
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=.*lats.ckpt does not exist .*holds: last.ckpt"):
        run(compose_train(run_dir, PARITY, f"ckpt_path={typo}"), run_dir)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == files


class _Code:
    """Not a plain container: weights_only=True refuses to build it."""


@pytest.mark.parametrize(
    "kind,expected",
    [
        ("empty", "is not a readable checkpoint: the file is empty.*ckpt_path=null"),
        ("truncated", "is not a readable checkpoint: not a complete torch.save archive.*ckpt_path=null"),
        ("garbage", "is not a readable checkpoint: not a complete torch.save archive.*ckpt_path=null"),
        ("needs_code", "holds objects that need code to load.*weights_only=True.*_Code"),
    ],
)
def test_unreadable_checkpoint_names_the_file_and_the_fix(finished, tmp_path, kind, expected):
    run_dir, files = _copy(finished, tmp_path)
    bad = tmp_path / "bad.ckpt"
    good = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    if kind == "needs_code":
        torch.save({"global_step": 1, "obj": _Code()}, bad)
    else:
        bad.write_bytes({"empty": b"", "truncated": good[: len(good) // 2], "garbage": b"\x8d" * 999}[kind])
    with pytest.raises(ValueError, match=rf"ckpt_path={re.escape(str(bad))} {expected}"):
        run(compose_train(run_dir, PARITY, f"ckpt_path={bad}"), run_dir)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == files


def test_resuming_across_masked_and_dense_training_is_refused_before_anything_is_touched(finished, tmp_path):
    run_dir, files = _copy(finished, tmp_path)
    dense = run_dir / "checkpoints" / "last.ckpt"  # the tiny default run trains densely (masking=none)
    assert "SaliencyMask" not in torch.load(dense, weights_only=True, mmap=True)["callbacks"]
    with pytest.raises(ValueError, match=r"trained densely .*masking.rebuild_masks=true"):
        run(compose_train(run_dir, PARITY, "masking=saliency", f"ckpt_path={dense}"), run_dir)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == files
    rebuild = compose_train(
        tmp_path, PARITY, "masking=saliency", "masking.rebuild_masks=true", f"ckpt_path={dense}"
    )
    assert check_config(rebuild) == 2  # masks built at the resumed step, on purpose
    masked = tmp_path / "masked.ckpt"
    torch.save({"global_step": 1, "callbacks": {"SaliencyMask": {"masks": {}}}}, masked)
    with pytest.raises(ValueError, match=r"trained with LongAct masks .* masking=none"):
        check_config(compose_train(tmp_path, PARITY, "masking=none", f"ckpt_path={masked}"))
    assert check_config(compose_train(tmp_path, PARITY, "masking=saliency", f"ckpt_path={masked}")) == 1


# ---------------------------------------------------------------- issue 22: what a resume may change


def _files(run_dir):
    """Every file of the run folder, by relative path (bytes): nothing may change before a run is valid."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_a_resume_that_changes_the_experiment_is_refused_by_name_before_anything_is_written(
    finished, tmp_path
):
    """algo=dapo on a GRPO checkpoint, another model shape, another masking: refused naming each field and
    the override, the run folder byte-identical; lr / max_steps / loggers may change; the override lets an
    intended change through, and a shape that still cannot load names its parameters (not torch's lines)."""
    from longact_pl.checkpoints.run_config import CONFIG_KEY

    run_dir, _ = _copy(finished, tmp_path)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True, mmap=True)[CONFIG_KEY]["algo"]["name"] == "grpo"
    files = _files(run_dir)
    resume = [PARITY, f"ckpt_path={last}"]
    with pytest.raises(
        ValueError, match=r"algo\.name: 'grpo' -> 'dapo'.*resume_allow_changes=\[algo\."
    ) as err:
        run(compose_train(run_dir, *resume, "algo=dapo"), run_dir)
    assert "algo.kl_coef" in str(err.value)
    with pytest.raises(ValueError, match=r"model\._target_: .*tiny_llama' -> .*tiny_qwen3'.*=\[model\]"):
        run(compose_train(run_dir, *resume, "model=tiny_qwen3"), run_dir)
    with pytest.raises(ValueError, match=r"rollout\.group_size: 4 -> 8"):
        run(compose_train(run_dir, *resume, "rollout.group_size=8"), run_dir)
    with pytest.raises(ValueError, match=r"model\.hidden_size: 64 -> 128"):
        run(compose_train(run_dir, *resume, "model.hidden_size=128"), run_dir)
    # the override passes the settings check; weights of another shape are then named, still before writing
    with pytest.raises(
        ValueError, match=r"holds weights of another model .*other shapes: .*\(.*64.*\) in the ch"
    ):
        run(compose_train(run_dir, *resume, "model.hidden_size=128", "resume_allow_changes=[model]"), run_dir)
    assert _files(run_dir) == files
    allowed = ["module.optimizer.lr=5e-4", "trainer.max_steps=7", "logger=tensorboard",
               "trainer.val_check_interval=3", "module.scheduler.warmup_steps=2",
               "callbacks.step_log.every_n=2"]  # fmt: skip
    assert check_config(compose_train(run_dir, *resume, *allowed)) == 2
    assert check_config(compose_train(run_dir, *resume, "algo=dapo", "resume_allow_changes=[algo]")) == 2


def test_a_masked_checkpoint_resumed_with_another_masking_is_refused_before_anything_is_written(
    finished, tmp_path
):
    """A saliency checkpoint resumed with masking=random: refused by name, config.yaml and hparams kept."""
    from omegaconf import OmegaConf

    from longact_pl.checkpoints.run_config import CONFIG_KEY

    run_dir, _ = _copy(finished, tmp_path)
    saliency = OmegaConf.to_container(compose_train(run_dir, PARITY, "masking=saliency"), resolve=True)
    ckpt = run_dir / "checkpoints" / "saliency.ckpt"
    torch.save({"global_step": 2, "callbacks": {"SaliencyMask": {"masks": {}}}, CONFIG_KEY: saliency}, ckpt)
    files = _files(run_dir)
    with pytest.raises(ValueError, match=r"masking\.selector\._target_: .*TopK' -> .*RandomK'"):
        run(compose_train(run_dir, PARITY, "masking=random", f"ckpt_path={ckpt}"), run_dir)
    assert _files(run_dir) == files
    rebuild = compose_train(
        run_dir, PARITY, "masking=random", "masking.rebuild_masks=true", f"ckpt_path={ckpt}"
    )
    assert check_config(rebuild) == 2  # new masks on purpose: rebuilt at the resumed step


def test_ctrl_c_inside_a_step_resumes_at_the_batch_boundary_it_holds(tmp_path):
    """Ctrl-C in step 3 (before its optimizer step): the exception checkpoint holds 2 steps and 2 batches, and
    the resumed run logs steps 2 and 3 as 2 and 3 (not 3 and 4) and validates the end as step_4."""
    from tests.helpers import InterruptReward

    common = ["trainer.max_steps=4", "trainer.val_check_interval=4"]
    InterruptReward.calls = 0
    with pytest.raises(SystemExit):
        run(compose_train(tmp_path, "data.reward._target_=tests.helpers.InterruptReward", *common), tmp_path)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    progress = last["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]
    assert last["global_step"] == 2 and progress["ready"] == progress["completed"] == 2
    reward = "data.reward._target_=tests.helpers.InterruptReward"  # the same reward, past its Ctrl-C call
    run(
        compose_train(tmp_path, reward, *common, f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"),
        tmp_path,
    )
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows if r["train/reward_mean"]] == ["0", "1", "2", "3"]
    assert sorted(p.name for p in (tmp_path / "val_predictions").iterdir()) == ["step_4.jsonl"]
