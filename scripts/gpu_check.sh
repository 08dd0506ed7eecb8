#!/usr/bin/env bash
# GPU acceptance checks, one script (under 8 minutes on one H200). Prints one line per figure or check:
#   name value=...                          figures (scripts/gpu_check.py: Qwen3-4B-shaped GRPO step at 32k
#                                           and 64k prompts: seconds, tokens/s, MFU, peak memory; LongAct
#                                           exactness; the vLLM weight sync time of the vLLM run)
# (checks: the figures, the tests marked `gpu`, short FSDP runs on the embedded SmolLM2 with HF and with vLLM
# rollouts, and vLLM sleep/wake)
#   PASS name | FAIL name (log) | SKIP name (reason)
# and exits non-zero if a check failed. Without a CUDA device every check is skipped (exit 0).
#
# Usage: scripts/gpu_check.sh [--dry]     (PYTHON=.venv/bin/python, LOG_DIR=a temp dir)
#   --dry: the figures' code path on the CPU with tiny shapes (the test suite runs it); the rest is skipped
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
LOG="${LOG_DIR:-$(mktemp -d -t longact-gpu-check-XXXX)}"
mkdir -p "$LOG"
STATUS=0
DRY=0
[ "${1:-}" = "--dry" ] && DRY=1
CHECKS="figures gpu-tests fsdp-smollm2 fsdp-smollm2-vllm vllm-sleep"

GPUS="$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)"
if [ "$GPUS" = "0" ] && [ "$DRY" = "0" ]; then
    for name in $CHECKS; do echo "SKIP $name (no CUDA device)"; done
    exit 0
fi

check() {  # check NAME CMD...: run CMD, print PASS/FAIL
    local name="$1"; shift
    if "$@" >"$LOG/$name.log" 2>&1; then
        echo "PASS $name"
    else
        echo "FAIL $name ($LOG/$name.log)"
        STATUS=1
    fi
}

# 1. figures: one GRPO step of a Qwen3-4B-shaped random model at 32k and 64k prompts, G=8 x 1k completions
FIG_ARGS=()
[ "$DRY" = "1" ] && FIG_ARGS=(--dry)
if "$PY" scripts/gpu_check.py "${FIG_ARGS[@]}" >"$LOG/figures.log" 2>&1; then
    grep -E '^[A-Za-z0-9_]+ value=' "$LOG/figures.log"
    echo "PASS figures"
else
    grep -E '^[A-Za-z0-9_]+ value=' "$LOG/figures.log"
    echo "FAIL figures ($LOG/figures.log)"
    STATUS=1
fi
if [ "$DRY" = "1" ]; then
    for name in gpu-tests fsdp-smollm2 fsdp-smollm2-vllm vllm-sleep; do echo "SKIP $name (dry run)"; done
    exit $STATUS
fi

# 2. pytest -m gpu (exit code 5 = nothing collected): LongAct masks exact on the GPU, single and FSDP2
"$PY" -m pytest -q -m gpu >"$LOG/gpu-tests.log" 2>&1
case $? in
    0) echo "PASS gpu-tests" ;;
    5) echo "SKIP gpu-tests (no test marked gpu)" ;;
    *) echo "FAIL gpu-tests ($LOG/gpu-tests.log)"; STATUS=1 ;;
esac

# 3./4. GRPO + LongAct under FSDP2 on up to 2 GPUs, model=hf on the embedded SmolLM2 folder, 2 steps;
# then the same with vLLM rollouts (weights pushed after each step), reporting the mean sync time
FOLDER="$("$PY" -c 'from longact_pl.models.smollm2 import smollm2_folder; print(smollm2_folder())')"
DEVICES=$(( GPUS < 2 ? GPUS : 2 ))
RUN=(train.py model=hf "model.name_or_path=$FOLDER" model.dtype=float32 strategy=fsdp
     trainer.accelerator=gpu "trainer.devices=$DEVICES" trainer.precision=bf16-mixed
     trainer.max_steps=2 trainer.val_check_interval=2 algo=dapo algo.dynamic_sampling=false
     masking=saliency masking.calib_samples=2
     data.batch_size=2 "data.train.lengths=[1024]" "data.val.lengths=[1024]" data.val.num_samples=2
     rollout.max_new_tokens=32 validate_before_training=false)
check fsdp-smollm2 "$PY" "${RUN[@]}" "hydra.run.dir=$LOG/fsdp-smollm2"
if "$PY" -c 'import vllm' >/dev/null 2>&1; then
    check fsdp-smollm2-vllm "$PY" "${RUN[@]}" rollout=vllm correction=token_tis rollout.kv_cache_gib=4 \
        "hydra.run.dir=$LOG/fsdp-smollm2-vllm"
    "$PY" - "$LOG/fsdp-smollm2-vllm/metrics.csv" <<'PYEOF' 2>/dev/null
import csv, sys
rows = [float(r["rollout/sync_s"]) for r in csv.DictReader(open(sys.argv[1])) if r.get("rollout/sync_s")]
print(f"vllm_sync_s value={sum(rows) / len(rows):.4g}" if rows else "vllm_sync_s value=missing")
PYEOF
else
    echo "SKIP fsdp-smollm2-vllm (vllm not installed: pip install vllm, the CUDA build)"
fi

# --- vLLM sleep / wake (issue 14, rollout.sleep_level) begin
# the colocated engine frees its GPU memory between rollouts and samples the same after waking (levels 1, 2)
if "$PY" -c 'import vllm' >/dev/null 2>&1; then
    check vllm-sleep "$PY" scripts/check_vllm_sleep.py
else
    echo "SKIP vllm-sleep (vllm not installed: make install-vllm)"
fi
# --- vLLM sleep / wake end
exit $STATUS
