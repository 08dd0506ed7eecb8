#!/usr/bin/env bash
# Launch train.py with torchrun on one or more nodes (one process per GPU). Run the same command on every
# node, with NODE_RANK=0..NNODES-1 and MASTER_ADDR = the node with NODE_RANK=0. Extra arguments are Hydra
# overrides. RUN_DIR must be the same path on every node (a shared filesystem), since every rank is started
# independently and would otherwise pick its own timestamped folder.
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=gpu-node-0 RUN_DIR=/shared/runs/qwen3-8b \
#       scripts/launch/torchrun.sh model=hf model.name_or_path=Qwen/Qwen3-8B algo=dapo ...
#
# CPU smoke test of the launcher (2 processes, gloo):
#   GPUS_PER_NODE=2 ACCELERATOR=cpu scripts/launch/torchrun.sh model=tiny_llama trainer.max_steps=2 \
#       trainer.precision=32-true
set -euo pipefail
cd "$(dirname "$0")/../.."

NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
GPUS_PER_NODE="${GPUS_PER_NODE:-$(nvidia-smi -L 2>/dev/null | wc -l)}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
ACCELERATOR="${ACCELERATOR:-gpu}"
STRATEGY="${STRATEGY:-fsdp}"
RUN_DIR="${RUN_DIR:-outputs/train/torchrun-$(date +%Y-%m-%d_%H-%M)}"
VENV="${VENV:-.venv}"

exec "$VENV/bin/torchrun" \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$GPUS_PER_NODE" \
    --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" \
    train.py "strategy=$STRATEGY" "trainer.accelerator=$ACCELERATOR" \
    "trainer.devices=$GPUS_PER_NODE" "trainer.num_nodes=$NNODES" "hydra.run.dir=$RUN_DIR" "$@"
