#!/usr/bin/env bash
# The default model on one NVIDIA GPU: recipe "gpu" of engine/recipe.py (the entries of the
# CPU recipe, budgeted in minutes instead of steps).
#   scripts/train_default_model_gpu.sh [DATA] [RUN]        (defaults: demo_data runs/gpu)
# 1. builds the demo dataset if DATA is missing, on every CPU core;
# 2. trains the vae, then three processes side by side on the GPU — Stage I → Stage II (the default
#    model), Stage II alone, the MONAI BasicUNet — each with data-loading workers, so the U-Net trains
#    as many minutes as each Stage II, at the same time on the same machine (DEVICE=cuda:N picks the
#    GPU). Logs: RUN/*.jsonl.
# Then, on any machine: `bench floor`, `bench quality` and `recipe --ship` as scripts/train_default_model.sh does
# (docs/training.md, "Training on a GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-demo_data}
RUN=${2:-runs/gpu}
PY=${PYTHON:-.venv/bin/python}
cores=$(nproc)
workers=$(( cores / 3 - 1 ))
[ "$workers" -ge 1 ] || workers=1

[ -d "$DATA" ] || $PY main.py make-demo-data --out "$DATA" --workers "$cores"
mkdir -p "$RUN"
recipe() {          # recipe LOG ENTRY…: the gpu recipe's entries, one after the other, logged to RUN/LOG.jsonl
    local log=$1
    shift
    $PY main.py recipe --recipe gpu --data "$DATA" --out "$RUN" --device "${DEVICE:-cuda}" --threads 1 \
        --workers "$workers" \
        --only "$@" >"$RUN/$log.jsonl" 2>"$RUN/$log.err"
}
recipe vae vae
recipe branch-stage1 understanding generation &
first=$!
recipe branch-stage2 generation-only &
second=$!
recipe branch-unet unet &
third=$!
status=0
for pid in $first $second $third; do
    wait "$pid" || status=1
done
[ "$status" = 0 ] || { echo "a branch failed: see $RUN/*.err" >&2; exit 1; }
echo "trained into $RUN; next: bench floor, bench quality and recipe --ship (scripts/train_default_model.sh, steps 3-4)"
