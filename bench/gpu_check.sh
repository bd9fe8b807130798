#!/usr/bin/env bash
# GPU check: the speed benchmark on a machine with an NVIDIA GPU and no network.
#
#   bench/gpu_check.sh [OUT_DIR]            (default OUT_DIR: ./gpu_check_out)
#
# Runs, from the repository root, with ${PYTHON:-python3} (a Python that has a CUDA build of
# torch and the project's dependencies installed):
#   1. `main.py bench speed` for the default model (resources/models/default), or the tiny preset
#      with random weights at 256² slices when there is none: fp32 vs fp16 vs bf16, context cache,
#      batching, on the whole volume;
#   2. the bagel-7b preset with random weights created in bf16 directly on the GPU (~29 GB; real
#      shapes and FLOPs), 256² slices, 25 steps, guidance text 4.0 / image 1.5 (three branches),
#      batch auto, on BAGEL_SLICES central slices (default 4; seconds per volume extrapolated).
# Writes OUT_DIR/{default,bagel-7b}.{json,md} and OUT_DIR/*.log (progress), prints the Markdown.
# Exit status: 0 when both ran, 1 when one failed (the other's results are still written).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python3}
OUT=${1:-./gpu_check_out}
mkdir -p "$OUT" || exit 1

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: $PY sees no CUDA GPU (torch.cuda.is_available() is False); install a CUDA build of torch" >&2
    exit 1
fi
"$PY" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")'

if [ -d resources/models/default ]; then
    DEFAULT_MODEL=(--model resources/models/default)
else
    echo "gpu_check: no resources/models/default — the tiny preset with random weights stands in for it"
    DEFAULT_MODEL=(--preset tiny --image-size 256)
fi

failed=0
run() {                       # run NAME ARGS…: bench speed → OUT/NAME.json, OUT/NAME.md, OUT/NAME.log
    local name=$1
    shift
    echo "gpu_check: $name …"
    if "$PY" main.py bench speed --device cuda "$@" --markdown --out "$OUT/$name.json" \
            >"$OUT/$name.md" 2>"$OUT/$name.log"; then
        echo "gpu_check: $name done"
    else
        echo "gpu_check: $name FAILED — the end of $OUT/$name.log:" >&2
        tail -n 20 "$OUT/$name.log" >&2
        failed=1
    fi
}

run default "${DEFAULT_MODEL[@]}" --precisions fp32,fp16,bf16 \
    --slices "${DEFAULT_SLICES:-0}" --repeats "${DEFAULT_REPEATS:-3}"
run bagel-7b --preset bagel-7b --precisions bf16 --image-size 256 --steps 25 --guidance 4.0 1.5 \
    --slices "${BAGEL_SLICES:-4}" --repeats "${BAGEL_REPEATS:-2}"

for name in default bagel-7b; do
    if [ -s "$OUT/$name.md" ]; then
        echo
        cat "$OUT/$name.md"
    fi
done
exit "$failed"
