import os
import stat
import subprocess

from tests.helpers import ROOT


def _sbatch(tmp_path, run_dir):
    """Run scripts/launch/slurm.sbatch with a fake ``srun`` that prints the command it was given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    srun = bin_dir / "srun"
    srun.write_text('#!/bin/sh\necho "$@"\n')
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    slurm = {"SLURM_SUBMIT_DIR": str(ROOT), "SLURM_JOB_ID": "7", "SLURM_NTASKS_PER_NODE": "8"}
    slurm["SLURM_NNODES"] = "1"
    env = {**os.environ, **slurm, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RUN_DIR": str(run_dir)}
    script = ROOT / "scripts" / "launch" / "slurm.sbatch"
    done = subprocess.run(["bash", str(script), "algo=dapo"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_requeued_slurm_job_resumes_from_its_last_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    assert "ckpt_path" not in _sbatch(tmp_path, run_dir)  # a new job starts fresh
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    line = _sbatch(tmp_path, run_dir)
    assert f"ckpt_path={run_dir}/checkpoints/last.ckpt algo=dapo" in line
