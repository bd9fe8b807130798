#!/usr/bin/env bash
# The default model's recipe, seeded, from one command:
#   scripts/train_default_model.sh [DATA] [OUT] [MINUTES_VAE] [MINUTES_STAGE1] [MINUTES_STAGE2]
# builds the demo dataset if DATA is missing, then trains vae → understanding (Stage I) →
# generation (Stage II) with the tiny preset at 64 px on whatever device is there (CUDA if any).
# Each stage writes a model folder; the last one is the default model. Rerunning resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-demo_data}
OUT=${2:-runs/default}
M_VAE=${3:-20}
M_UND=${4:-10}
M_GEN=${5:-25}
PY=.venv/bin/python
COMMON=(--size tiny --image-size 64 --seed 0 --device auto --threads "${THREADS:-2}")

[ -d "$DATA" ] || $PY main.py make-demo-data --out "$DATA"
$PY main.py train --data "$DATA" --stage vae --out "$OUT/vae" --minutes "$M_VAE" --batch-size 16 --lr 1e-3 "${COMMON[@]}"
$PY main.py train --data "$DATA" --stage understanding --out "$OUT/understanding" --init "$OUT/vae" \
    --minutes "$M_UND" --batch-size 8 --lr 5e-4 "${COMMON[@]}"
$PY main.py train --data "$DATA" --stage generation --out "$OUT/generation" --init "$OUT/understanding" \
    --minutes "$M_GEN" --batch-size 8 --lr 5e-4 --source-token-aligned "${COMMON[@]}"
echo "default model: $OUT/generation (copy its model files into resources/models/default)" >&2
