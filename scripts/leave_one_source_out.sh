#!/usr/bin/env bash
# Leave-one-source-out rows of the quality benchmark (docs/model.md, "Leave one source out"):
#   scripts/leave_one_source_out.sh SOURCE [DATA] [RUN]     (defaults: demo_data runs/loso-SOURCE)
# trains the default recipe's vae → Stage I → Stage II and its U-Net (beside Stage I and II, one thread
# each, as scripts/train_default_model.sh with PARALLEL=1) without every subject of SOURCE, a source
# DATA/dataset.json names (mni152, colin27, … for the demo data), then scores them, and the identity
# baseline fitted without it, on all of SOURCE's subjects (RUN/quality.json, RUN/quality.md).
# Rerunning resumes an interrupted entry and skips finished ones. Nothing is shipped.
set -euo pipefail
cd "$(dirname "$0")/.."
SOURCE=${1:?usage: scripts/leave_one_source_out.sh SOURCE [DATA] [RUN]}
DATA=${2:-demo_data}
RUN=${3:-runs/loso-$SOURCE}
PY=.venv/bin/python

[ -d "$DATA" ] || $PY main.py make-demo-data --out "$DATA"
mkdir -p "$RUN"
$PY main.py recipe --data "$DATA" --out "$RUN" --leave-out "$SOURCE" --only vae
$PY main.py recipe --data "$DATA" --out "$RUN" --leave-out "$SOURCE" --only understanding generation --threads 1 \
    > "$RUN/branch-stage1.jsonl" &
first=$!
$PY main.py recipe --data "$DATA" --out "$RUN" --leave-out "$SOURCE" --only unet --threads 1 > "$RUN/branch-unet.jsonl" &
second=$!
wait $first
wait $second
$PY main.py bench quality --run "$RUN" --data "$DATA" --slices 4 --no-generalization --out "$RUN/quality.json" \
    --markdown > "$RUN/quality.md"
cat "$RUN/quality.md"
