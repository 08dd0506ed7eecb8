"""Offline install: `make wheelhouse VARIANT=cpu`, `make install WHEELHOUSE=dir` in a fresh venv, no network.

The wheelhouse is built once per lock (cached under ``~/.cache/longact_pl/``, ~400 MB: the CPU lock's wheels
for this interpreter, antlr4-python3-runtime built from its sdist). The install and a quick subset of the
suite then run in a network namespace without interfaces (``unshare -n``, as root) or, where that is not
possible, with pip's index disabled and a proxy that refuses connections; pip's configuration files are
ignored, so nothing but the wheelhouse is a source. About 4-7 minutes on 2 busy cores (the install).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

PYVER = f"{sys.version_info[0]}.{sys.version_info[1]}"
QUICK = [
    "tests/test_lock.py::test_lock_pins_every_installed_dependency_of_the_package",
    "tests/rollout/test_placement.py",
    "tests/models/test_rope.py::test_policy_reference_and_engine_share_one_scaling",
]


def _wheelhouse() -> Path:
    key = hashlib.sha256()
    for name in ("constraints.txt", "pyproject.toml", "scripts/wheelhouse.sh"):
        key.update((ROOT / name).read_bytes())
    cache = Path(os.environ.get("LONGACT_CACHE", Path.home() / ".cache" / "longact_pl"))
    folder = cache / f"wheelhouse-cpu-py{PYVER}-{key.hexdigest()[:12]}"
    if not (folder / "TARGET").is_file():
        tmp = folder.with_name(folder.name + ".part")
        shutil.rmtree(tmp, ignore_errors=True)
        env = {**os.environ, "TORCH_INDEX": os.environ.get("TORCH_INDEX", "")}
        subprocess.run(
            ["bash", "scripts/wheelhouse.sh", str(tmp), "cpu", PYVER, "manylinux_2_28_x86_64"],
            cwd=ROOT, env=env, check=True, timeout=1200, capture_output=True,
        )  # fmt: skip
        tmp.rename(folder)
    return folder


def _offline(cmd: list[str]) -> list[str]:
    """``cmd`` in a network namespace without interfaces, where this process may make one."""
    root = os.geteuid() == 0 and shutil.which("unshare")
    if root and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-n", *cmd]
    return cmd


@pytest.mark.slow
@pytest.mark.install
def test_fresh_venv_installs_from_the_wheelhouse_offline_and_passes_a_quick_subset(tmp_path):
    wheels = _wheelhouse()
    assert any(wheels.glob("antlr4_python3_runtime-4.9.3-py3-none-any.whl"))  # built from the sdist
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
    env |= {
        "PIP_CONFIG_FILE": os.devnull,  # no configured index or find-links: the wheelhouse only
        "PIP_NO_COMPILE": "1",
        "https_proxy": "http://127.0.0.1:9",  # and a refused proxy, if no namespace could be made
        "http_proxy": "http://127.0.0.1:9",
    }
    venv = tmp_path / "venv"
    make = ["make", "install", f"VENV={venv}", f"WHEELHOUSE={wheels}", f"PYTHON={sys._base_executable}"]
    install = subprocess.run(
        _offline(make),
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    assert "--no-index --find-links" in install.stdout
    python = venv / "bin" / "python"
    version = subprocess.run(
        [python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True
    )
    assert version.stdout.strip().startswith("2.13.0"), version.stderr
    quick = subprocess.run(
        _offline([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *QUICK]),
        cwd=ROOT, env=env | {"PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert quick.returncode == 0, quick.stdout[-3000:] + quick.stderr[-3000:]
    assert " passed" in quick.stdout and "skipped" not in quick.stdout
