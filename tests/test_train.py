import csv
import subprocess
import sys

import pytest
import torch

from longact_pl.models.hf import load_hf
from longact_pl.models.tiny import tiny_llama
from longact_pl.train import check_run_dir, run
from tests.helpers import NO_CKPT, ROOT, child_env, compose_train

PARITY = "data.reward._target_=tests.helpers.ParityReward"


def _rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _train_rows(run_dir):
    return [r for r in _rows(run_dir) if r.get("train/reward_mean")]


@pytest.mark.parametrize("algo", ["grpo", "dapo", "dr_grpo"])
def test_algorithms_train_end_to_end(tmp_path, algo):
    cfg = compose_train(tmp_path, f"algo={algo}", PARITY)
    run(cfg, tmp_path)
    rows = _train_rows(tmp_path)
    assert len(rows) == 2
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "final" / "model.safetensors").is_file() and (
        tmp_path / "final" / "tokenizer.json"
    ).is_file()
    # one pass over one mini-batch: on-policy, the importance ratio is exactly 1
    assert all(float(r["train/ratio_mean"]) == 1.0 for r in rows)
    start, final = tiny_llama(seed=cfg.seed).model, load_hf(str(tmp_path / "final"), dtype="float32").model
    changed = [n for n, p in final.named_parameters() if not torch.equal(p, start.get_parameter(n))]
    assert any("q_proj" in n for n in changed) and any("mlp" in n for n in changed)
    assert any(k.startswith("val/acc") and v for r in _rows(tmp_path) for k, v in r.items())


def test_grpo_logs_kl_and_dapo_drops_uniform_groups(tmp_path):
    grpo_dir, dapo_dir = tmp_path / "grpo", tmp_path / "dapo"
    run(compose_train(grpo_dir, "algo=grpo", "trainer.max_steps=1", PARITY), grpo_dir)
    assert "train/kl" in _train_rows(grpo_dir)[0]
    # the default reward gives 0 everywhere on a random model: every group is uniform and dropped
    run(compose_train(dapo_dir, "algo=dapo", "trainer.max_steps=1", "trainer.max_epochs=1",
                      "data.train.num_samples=4", "algo.max_gen_rounds=2"), dapo_dir)  # fmt: skip
    skipped = [r for r in _rows(dapo_dir) if r.get("train/skipped_steps")]
    assert len(skipped) == 2  # both batches of the epoch were skipped: no optimizer step at all
    start, final = tiny_llama(seed=42).model, load_hf(str(dapo_dir / "final"), dtype="float32").model
    assert all(torch.equal(p, start.get_parameter(n)) for n, p in final.named_parameters())


def test_several_optimizer_steps_per_rollout(tmp_path):
    cfg = compose_train(tmp_path, PARITY, "module.learner.ppo_epochs=2", "module.learner.mini_batch_size=4",
                        "module.learner.micro_batch_size=2", "trainer.max_steps=4")  # fmt: skip
    run(cfg, tmp_path)
    rows = _train_rows(tmp_path)
    # 8 sequences per RL step, mini-batches of 4, 2 epochs: 4 optimizer steps in one RL step
    assert len(rows) == 1
    assert float(rows[0]["train/ratio_mean"]) != 1.0  # stored behaviour log-probs after the first update


def test_every_logprob_pass_names_the_group_of_each_row(tmp_path, monkeypatch):
    """Spans come from row indices, not prompt contents (FSDP ranks must run equal numbers of forwards).

    Mini-batches of 6 rows shuffle single rows (6 is not a multiple of G=4); group_spans checks that rows
    given the same index share a prompt, so a wrong index fails the run.
    """
    import longact_pl.ops.policy_logprobs as lp

    seen = []

    def spy(*args, row_groups=None, **kwargs):
        seen.append(row_groups)
        return lp_grouped(*args, row_groups=row_groups, **kwargs)

    lp_grouped = lp.grouped_completion_logprobs
    monkeypatch.setattr(lp, "grouped_completion_logprobs", spy)
    cfg = compose_train(tmp_path, PARITY, "module.learner.ppo_epochs=1", "module.learner.mini_batch_size=6",
                        "module.learner.micro_batch_size=3", "trainer.max_steps=3")  # fmt: skip
    run(cfg, tmp_path)
    assert seen and all(g is not None for g in seen)
    # 8 rows per step: behaviour/old pass in order, then shuffled training micro-batches of 3 (last 2)
    assert any(not torch.equal(g, g.sort().values) for g in seen)  # shuffled rows got their own groups


def test_shared_prefix_training_matches_the_per_row_path(tmp_path):
    """module.logprobs.shared_prefix changes how the prompt is computed, not the numbers (fp32, tiny)."""
    runs = {}
    for shared in ("true", "false"):
        d = tmp_path / shared
        run(compose_train(d, PARITY, f"module.logprobs.shared_prefix={shared}", "masking=saliency",
                          "masking.calib_samples=1", "masking.refresh_every=1"), d)  # fmt: skip
        runs[shared] = (_train_rows(d), load_hf(str(d / "final"), dtype="float32").model)
    (rows_a, model_a), (rows_b, model_b) = runs["true"], runs["false"]
    assert len(rows_a) == len(rows_b) == 2
    for a, b in zip(rows_a, rows_b):
        assert a["train/reward_mean"] == b["train/reward_mean"]  # the same samples at step 2
        for key in ("train/loss", "train/entropy", "train/kl", "train/grad_norm"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-7), key
    for (name, p), q in zip(model_a.named_parameters(), model_b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0, msg=name)


def test_truncated_prompts_are_counted(tmp_path):
    run(compose_train(tmp_path, PARITY, "data.max_prompt_tokens=200", "trainer.max_steps=1"), tmp_path)
    assert float(_train_rows(tmp_path)[0]["train/truncated_prompts_total"]) == 2.0


def test_existing_run_is_not_overwritten(tmp_path):
    (tmp_path / "metrics.csv").write_text("old")
    with pytest.raises(FileExistsError, match="already holds a run"):
        check_run_dir(tmp_path, resuming=False)
    check_run_dir(tmp_path, resuming=True)
    with pytest.raises(FileExistsError):
        run(compose_train(tmp_path), tmp_path)
    assert (tmp_path / "metrics.csv").read_text() == "old"


def _cli(run_dir, *overrides):
    env = child_env()
    cmd = [sys.executable, "train.py", "model=tiny_llama", f"hydra.run.dir={run_dir}", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "override,expected",
    [
        ("rollout.group_size=1", "rollout.group_size must be >= 2"),
        ("algo.eps_low=-0.1", "algo.eps_low must be >= 0"),
        ("algo=ppo_typo", "grpo"),  # Hydra lists the available options
        ("model=smollm2_135m model.dtype=fp8", "model.dtype='fp8'"),
    ],
)
def test_cli_bad_config_fails_and_writes_nothing(tmp_path, override, expected):
    (tmp_path / "notes.txt").write_text("keep me")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = _cli(tmp_path, *override.split())
    assert result.returncode != 0
    assert expected in result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "notes.txt").read_text() == "keep me"


@pytest.mark.slow
def test_cli_smoke_run_writes_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    result = _cli(run_dir, "trainer.max_steps=1", "trainer.val_check_interval=1", "data.train.lengths=[256]",
                  "data.val.lengths=[256]", "data.val.num_samples=2", "rollout.max_new_tokens=4")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"config.yaml", "metrics.csv", "checkpoints", "final"} <= {p.name for p in run_dir.iterdir()}
    assert "val/acc" in result.stdout + result.stderr


@pytest.mark.slow
def test_one_grpo_step_on_smollm2(tmp_path):
    cfg = compose_train(
        tmp_path, "model=smollm2_135m", "trainer.max_steps=1", "trainer.val_check_interval=1",
        "data.batch_size=1", "rollout.group_size=2", "rollout.max_new_tokens=12", "data.train.lengths=[512]",
        "data.val.lengths=[512]", "data.val.num_samples=1", "module.optimizer.lr=1e-5",
        "trainer.precision=bf16-mixed", NO_CKPT,
    )  # fmt: skip
    metrics = run(cfg, tmp_path)
    rows = _train_rows(tmp_path)
    assert len(rows) == 1 and float(rows[0]["train/completion_len"]) > 0
    assert "val/acc" in metrics
    assert (tmp_path / "final" / "model.safetensors").stat().st_size > 100_000_000
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()  # NO_CKPT: no 1.6 GB checkpoint


def test_nonfinite_step_is_skipped_and_training_continues(tmp_path):
    from tests.helpers import NaNReward

    NaNReward.calls = 0
    cfg = compose_train(tmp_path, "data.reward._target_=tests.helpers.NaNReward", "+data.reward.bad_calls=1",
                        "trainer.max_steps=1")  # fmt: skip
    run(cfg, tmp_path)
    rows = _rows(tmp_path)
    assert any(r.get("train/nonfinite_steps") == "1.0" for r in rows)
    assert len(_train_rows(tmp_path)) == 2  # the skipped batch and the one that stepped
    start, final = tiny_llama(seed=cfg.seed).model, load_hf(str(tmp_path / "final"), dtype="float32").model
    assert not torch.equal(final.lm_head.weight, start.lm_head.weight)


def test_three_nonfinite_steps_stop_with_a_checkpoint(tmp_path):
    from longact_pl.guards import NonFiniteError
    from tests.helpers import NaNReward

    NaNReward.calls = 0
    cfg = compose_train(
        tmp_path, "data.reward._target_=tests.helpers.NaNReward", "+data.reward.bad_calls=100"
    )
    with pytest.raises(NonFiniteError, match="3 optimizer steps in a row"):
        run(cfg, tmp_path)
    assert (tmp_path / "checkpoints" / "nonfinite.ckpt").is_file()


def test_raising_reward_scores_zero_and_run_continues(tmp_path):
    run(compose_train(tmp_path, "data.reward._target_=tests.helpers.RaisingReward"), tmp_path)
    rows = _train_rows(tmp_path)
    assert len(rows) == 2 and float(rows[-1]["train/reward_errors"]) > 0


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_preemption_signal_writes_a_checkpoint(tmp_path, sig):
    import signal
    import time

    run_dir = tmp_path / "run"
    env = child_env()
    cmd = [sys.executable, "train.py", "model=tiny_llama", f"hydra.run.dir={run_dir}",
           "trainer.max_steps=1000", "trainer.val_check_interval=1000", "data.train.lengths=[256]",
           "rollout.max_new_tokens=4", "validate_before_training=false",
           "callbacks.model_checkpoint.every_n_train_steps=1000"]  # fmt: skip
    # a shell's background job (`make test &`) starts with SIGINT ignored, and children inherit that: restore
    # the default, so the child's Python turns Ctrl-C into KeyboardInterrupt as in a terminal
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and not (run_dir / "metrics.csv").exists():
        time.sleep(0.5)
    time.sleep(2)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=240)
    # SIGTERM: sigterm_exit_code (143), so SLURM and `&&` see a pre-empted run; Ctrl-C: Lightning's 1
    assert proc.returncode == (143 if sig == "SIGTERM" else 1), err[-2000:]
    ckpts = list((run_dir / "checkpoints").glob("*.ckpt"))
    assert ckpts, err[-2000:]
    state = torch.load(ckpts[0], map_location="cpu", weights_only=True)
    assert state["global_step"] >= 1


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    """Stop after step 2, resume from last.ckpt: steps 3..4 log exactly what an uninterrupted run logs."""
    common = [PARITY, "masking=saliency", "masking.calib_samples=1", "masking.refresh_every=1",
              "callbacks.model_checkpoint.every_n_train_steps=1", "trainer.val_check_interval=100",
              "data.train.num_samples=6", "data.batch_size=2"]  # fmt: skip
    full, part = tmp_path / "full", tmp_path / "part"
    run(compose_train(full, *common, "trainer.max_steps=4"), full)
    run(compose_train(part, *common, "trainer.max_steps=2"), part)
    (part / "metrics.csv").rename(part / "metrics_first.csv")
    ckpt = part / "checkpoints" / "last.ckpt"
    run(compose_train(part, *common, "trainer.max_steps=4", f"ckpt_path={ckpt}"), part)
    skip = {"train/tokens_per_s"}
    a = [{k: v for k, v in r.items() if k not in skip} for r in _train_rows(full)]
    b = [{k: v for k, v in r.items() if k not in skip} for r in _train_rows(part)]
    assert len(a) == 4 and len(b) == 2  # the resumed run logged steps 3 and 4 (one crossing an epoch)
    assert b == a[2:]
    wa = load_hf(str(full / "final"), dtype="float32").model
    wb = load_hf(str(part / "final"), dtype="float32").model
    assert all(torch.equal(p, q) for p, q in zip(wa.parameters(), wb.parameters()))
