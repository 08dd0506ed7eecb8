#!/usr/bin/env bash
# GPU smoke checks for a GPU machine: the tests marked `gpu`, then short FSDP runs on the embedded SmolLM2
# (HF rollouts, and vLLM rollouts when vLLM is installed), and vLLM sleep/wake. Prints one line per check:
#   PASS name | FAIL name (log) | SKIP name (reason)
# and exits non-zero if a check failed. Without a CUDA device every check is skipped (exit 0).
#
# Usage: scripts/gpu_check.sh            (PYTHON=.venv/bin/python, LOG_DIR=a temp dir)
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
LOG="${LOG_DIR:-$(mktemp -d -t longact-gpu-check-XXXX)}"
mkdir -p "$LOG"
STATUS=0
CHECKS="gpu-tests fsdp-smollm2 fsdp-smollm2-vllm vllm-sleep"

GPUS="$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)"
if [ "$GPUS" = "0" ]; then
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

# 1. pytest -m gpu (exit code 5 = nothing collected)
"$PY" -m pytest -q -m gpu >"$LOG/gpu-tests.log" 2>&1
case $? in
    0) echo "PASS gpu-tests" ;;
    5) echo "SKIP gpu-tests (no test marked gpu)" ;;
    *) echo "FAIL gpu-tests ($LOG/gpu-tests.log)"; STATUS=1 ;;
esac

# 2./3. GRPO + LongAct under FSDP2 on up to 2 GPUs, model=hf on the embedded SmolLM2 folder
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
else
    echo "SKIP fsdp-smollm2-vllm (vllm not installed: make install-vllm)"
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
