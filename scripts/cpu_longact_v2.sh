#!/usr/bin/env bash
# The CPU LongAct experiment, version 2 (issue 17, docs/results/cpu_longact_v2.md): 3 maskings x 3 seeds of
# conf/experiment/cpu_longact_v2.yaml, one after another, then the report with paired per-prompt CIs.
# Sized for ~100 minutes on an otherwise idle 2-core machine (see the doc's "Sizing"); start it on a quiet one.
#
#   scripts/cpu_longact_v2.sh                 # -> multirun/cpu_longact_v2/<date>/, report in <date>/report/
#   SEEDS=0,1,2,3 ROOT=multirun/cpu_longact_v2/final scripts/cpu_longact_v2.sh   # more seeds, a fixed folder
#   scripts/cpu_longact_v2.sh trainer.max_steps=2                                 # other overrides pass through
#
# Writes ROOT/timing.txt (start, end, load averages), so the report can say what the run cost.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
ROOT="${ROOT:-multirun/cpu_longact_v2/$(date +%Y-%m-%d_%H-%M-%S)}"
MASKINGS="${MASKINGS:-saliency,random,none}"
SEEDS="${SEEDS:-0,1,2}"
mkdir -p "$ROOT"
{ echo "start $(date -u +%FT%TZ) $(git rev-parse --short HEAD) load: $(cut -d' ' -f1-3 /proc/loadavg)"; } >> "$ROOT/timing.txt"
status=0
"$VENV/bin/python" train.py -m experiment=cpu_longact_v2 "masking=$MASKINGS" "seed=$SEEDS" \
    "hydra.sweep.dir=$ROOT" "$@" || status=$?
{ echo "end   $(date -u +%FT%TZ) exit $status load: $(cut -d' ' -f1-3 /proc/loadavg)"; } >> "$ROOT/timing.txt"
# the report lists any run that is missing or crashed; it is written either way
"$VENV/bin/python" scripts/report.py "$ROOT" --paired
echo "report: $ROOT/report/report.md; per-prompt records: $ROOT/*/val_predictions/step_<k>.jsonl"
exit "$status"
