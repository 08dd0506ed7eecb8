"""A checkpoint write that fails (full disk, I/O error) never replaces a good checkpoint.

Both tests use the checkpoint I/O of the trainer that ``conf/trainer/default.yaml`` builds.
"""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from hydra.utils import instantiate

from tests.helpers import ROOT, child_env, compose_train


def _checkpoint_io(tmp_path):
    cfg = compose_train(tmp_path, "trainer.accelerator=cpu")
    return instantiate(cfg.trainer, callbacks=[], logger=False).strategy.checkpoint_io


@pytest.mark.parametrize("fail", ["write", "fsync", "rename"])
def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, fail):
    io = _checkpoint_io(tmp_path)
    folder = tmp_path / "checkpoints"
    target = folder / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, target)
    good = target.read_bytes()
    synced = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        if fail == "fsync" and len(synced) == 1:
            raise OSError(28, "No space left on device")
        return real_fsync(fd)

    def replace(src, dst):
        if fail == "rename":
            raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    def save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    if fail == "write":
        monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert target.read_bytes() == good
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]  # no temporary file left behind
    if fail != "write":  # the new file was synced to disk in the destination folder, before any rename
        assert synced and os.path.dirname(synced[0]) == os.path.realpath(folder)
    io.save_checkpoint({"global_step": 3, "w": torch.zeros(3)}, target)  # and a later save works
    assert torch.load(target, weights_only=True)["global_step"] == 3


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt"], capture_output=True
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs a private mount namespace (unshare -m, as root)")
def test_full_disk_keeps_the_previous_checkpoint(tmp_path):
    """The checkpoint folder is a 256 KiB tmpfs: a 400 KB save fails with ENOSPC and last.ckpt stays good."""
    io = type(_checkpoint_io(tmp_path))
    folder = tmp_path / "small_disk"
    folder.mkdir()
    script = textwrap.dedent(f"""
        import importlib, os, torch
        io = getattr(importlib.import_module({io.__module__!r}), {io.__qualname__!r})()
        target = {str(folder / "last.ckpt")!r}
        io.save_checkpoint({{"global_step": 1, "w": torch.ones(1000)}}, target)
        try:
            io.save_checkpoint({{"global_step": 2, "w": torch.zeros(100_000)}}, target)
            print("saved")
        except OSError as err:
            print("OSError", err.errno)
        state = torch.load(target, weights_only=True)
        print("kept", state["global_step"], bool(state["w"].eq(1).all()), sorted(os.listdir({str(folder)!r})))
    """)
    (tmp_path / "save.py").write_text(script)
    cmd = f"mount -t tmpfs -o size=256k tmpfs {folder} && exec {sys.executable} {tmp_path / 'save.py'}"
    env = child_env()
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", cmd], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "OSError 28" in done.stdout
    assert "kept 1 True ['last.ckpt']" in done.stdout
