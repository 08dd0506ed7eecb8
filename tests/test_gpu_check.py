import os
import subprocess

from tests.helpers import ROOT


def test_gpu_check_skips_cleanly_without_cuda(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "LOG_DIR": str(tmp_path)}
    result = subprocess.run(
        ["bash", "scripts/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines == [
        f"SKIP {name} (no CUDA device)"
        for name in ("gpu-tests", "fsdp-smollm2", "fsdp-smollm2-vllm", "vllm-sleep")
    ]
