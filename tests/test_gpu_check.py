import importlib.util
import os
import re
import subprocess
import sys

import pytest

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


def test_gpu_check_skips_cleanly_without_cuda(tmp_path):
    result = _script(tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines == [
        f"SKIP {name} (no CUDA device)"
        for name in ("figures", "gpu-tests", "fsdp-smollm2", "fsdp-smollm2-vllm", "vllm-sleep")
    ]


@pytest.mark.slow
def test_gpu_check_dry_runs_the_figures_code_on_cpu(tmp_path):
    """``--dry``: one GRPO step per prompt length of a tiny Qwen3 through the learner, LongAct masks exact."""
    result = _script(tmp_path, "--dry")
    assert result.returncode == 0, result.stdout + (tmp_path / "figures.log").read_text()[-3000:]
    figures = dict(re.findall(r"^(\S+) value=(\S+)$", result.stdout, flags=re.M))
    for prompt in (64, 128):
        for what in ("seconds", "tokens_per_s", "mfu"):
            assert float(figures[f"grpo_step_{prompt}_{what}"]) > 0
        assert figures[f"grpo_step_{prompt}_peak_mem_gib"] == "n/a(cpu)"
    assert float(figures["matmul_bf16_tflops"]) > 0
    assert figures["longact_masked_rows_exact"] == "true"
    assert "PASS figures" in result.stdout
    assert all(
        f"SKIP {n} (dry run)" in result.stdout
        for n in ("gpu-tests", "fsdp-smollm2", "fsdp-smollm2-vllm", "vllm-sleep")
    )


def test_step_flops_by_hand():
    """1 layer, hidden 2, MLP 3, 1 head (and KV head) of dim 2, vocab 5; prompt 4 tokens, one completion of 2.

    Per token: projections 2*(2*2*(2+2)) = 32, MLP 2*(3*2*3) = 36 -> 68; 6 tokens -> 408. Attended pairs: the
    prompt 4*5/2 = 10, the completion 2*4 + 2*3/2 = 11 -> 21, at 4*1*2 = 8 each -> 168. LM head on the 2
    completion tokens: 2*2*5*2 = 40. Forward 616, forward + backward 3 x 616 = 1848.
    """
    shape = dict(hidden_size=2, intermediate_size=3, num_attention_heads=1, num_key_value_heads=1, head_dim=2,
                 num_hidden_layers=1, vocab_size=5)  # fmt: skip
    assert _gpu_check_module().step_flops(shape, 4, [2]) == 1848
