#!/usr/bin/env bash
# The README screenshot, made by the real application (app/automation.py): a first launch in a
# temporary settings folder opens the demo study, synthesizes T2 from T1, and saves
#   OUT_DIR/comparison.png  the comparison view (source | synthetic | reference | difference, metrics)
#   OUT_DIR/volume_3d.png   what VTK's 3D view of the synthetic volume drew
#   OUT_DIR/window.png      the whole window, as the X server shows it
# Without the default model (resources/models/default) it uses an untrained random-weight tiny
# model (engine/inference/random_model.py) with 2 steps: the synthetic volume is then not a T2.
# Usage: scripts/screenshot.sh [OUT_DIR]   (default: docs/screenshots). Without $DISPLAY it runs
# under xvfb-run.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(realpath -m "${1:-docs/screenshots}")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
model='null'
steps='null'
if [ ! -f resources/models/default/config.json ]; then
    .venv/bin/python -c 'import sys; from engine.inference.random_model import write_random_model as w; w(sys.argv[1], routes=[("T1", "T2")])' "$work/model"
    model="\"$work/model\""
    steps=2
fi
cat > "$work/script.json" <<JSON
{"source": "T1", "target": "T2", "model": $model, "steps": $steps,
 "comparison_png": "$out/comparison.png", "volume_3d_png": "$out/volume_3d.png", "window_png": "$out/window.png"}
JSON
run=(.venv/bin/python main.py)
if [ -z "${DISPLAY:-}" ]; then
    run=(xvfb-run -a -s "-screen 0 1600x1000x24" "${run[@]}")
fi
SYNERMEDGEN_CONFIG_DIR="$work/config" SYNERMEDGEN_AUTOMATION="$work/script.json" QT_QPA_PLATFORM=xcb "${run[@]}"
echo "screenshots in $out"
