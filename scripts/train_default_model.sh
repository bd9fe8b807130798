#!/usr/bin/env bash
# The default model from one command, seeded (engine/recipe.py holds the recipe):
#   scripts/train_default_model.sh [DATA] [RUN]        (defaults: demo_data runs/default)
# 1. builds the demo dataset if DATA is missing;
# 2. trains vae → Stage I → Stage II (the default model) and the comparison runs of the quality
#    benchmark (Stage II only, MONAI BasicUNet) into RUN/… — rerunning resumes / skips finished ones;
#    PARALLEL=1 trains the two independent branches side by side, one thread each (faster on 2 cores);
# 3. chooses the CBCT → CT source floor on the validation subjects (`bench floor --write-card`, RUN/floor.md),
#    then runs `bench quality` (RUN/quality.json, RUN/quality.md);
# 4. ships RUN/generation as resources/models/default with its model card.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-demo_data}
RUN=${2:-runs/default}
PY=.venv/bin/python

[ -d "$DATA" ] || $PY main.py make-demo-data --out "$DATA"
if [ "${PARALLEL:-0}" = 1 ]; then
    $PY main.py recipe --data "$DATA" --out "$RUN" --only vae
    $PY main.py recipe --data "$DATA" --out "$RUN" --only understanding generation --threads 1 > "$RUN/branch-stage1.jsonl" &
    first=$!
    $PY main.py recipe --data "$DATA" --out "$RUN" --only generation-only unet --threads 1 > "$RUN/branch-stage2.jsonl" &
    second=$!
    wait $first
    wait $second
else
    $PY main.py recipe --data "$DATA" --out "$RUN"
fi
$PY main.py bench floor --model "$RUN/generation" --data "$DATA" --write-card --out "$RUN/floor.json" --markdown > "$RUN/floor.md"
$PY main.py bench quality --run "$RUN" --data "$DATA" --slices 4 --seeds 3 --out "$RUN/quality.json" --markdown > "$RUN/quality.md"
$PY main.py recipe --data "$DATA" --out "$RUN" --ship resources/models/default --quality "$RUN/quality.json"
cat "$RUN/quality.md"
