#!/usr/bin/env bash
# Builds the one-folder bundle dist/SynerMedGen/ with PyInstaller from installer/synermedgen.spec,
# in the project's .venv (scripts/setup.sh makes it), then prints the size report.
# Usage: installer/build.sh [DISTPATH [WORKPATH]]   (defaults: dist, build/pyinstaller)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
dist=${1:-dist}
work=${2:-build/pyinstaller}
started=$(date +%s)
.venv/bin/pyinstaller installer/synermedgen.spec --distpath "$dist" --workpath "$work" --noconfirm --log-level WARN
echo "build: $dist/SynerMedGen in $(( $(date +%s) - started )) s"
.venv/bin/python installer/size_report.py "$dist/SynerMedGen"
