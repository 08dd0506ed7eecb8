"""Issue 22: ``data=jsonl`` without ``data.val.path`` trains (no validation), and in a log file each step's
line is a line of its own (no progress-bar redraw glued in front of it)."""

import json
import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT, child_env

LOG_LINE = re.compile(r"^step (\d)/2 reward ")  # hydra/job_logging=stdout: the message alone


@pytest.mark.slow
def test_jsonl_without_val_trains_and_logs_one_line_per_step_in_a_file(tmp_path):
    data = tmp_path / "train.jsonl"
    rows = [{"prompt": f"Say the word number {i}.", "answer": f"w{i}"} for i in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir, log = tmp_path / "run", tmp_path / "train.log"
    cmd = [sys.executable, "train.py", "data=jsonl", f"data.train.path={data}", "model=tiny_llama",
           f"hydra.run.dir={run_dir}", "trainer.max_steps=2", "trainer.precision=32-true",
           "rollout.max_new_tokens=4", "rollout.group_size=2",
           "data.reward._target_=tests.helpers.ParityReward",
           "module.optimizer.lr=1e-3", "callbacks.model_checkpoint.save_last=false"]  # fmt: skip
    with log.open("w") as f:  # stdout and stderr into one file, as SLURM writes them
        done = subprocess.run(cmd, cwd=ROOT, env=child_env(), stdout=f, stderr=subprocess.STDOUT, timeout=600)
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    assert "IndexError" not in text and (run_dir / "final").is_dir()
    assert not (run_dir / "val_predictions").exists()  # no validation set: nothing validated
    steps = [m.group(1) for line in text.split("\n") if (m := LOG_LINE.match(line))]
    assert steps == ["1", "2"], text[-3000:]
    assert "\r" not in text  # no redraws in a file
