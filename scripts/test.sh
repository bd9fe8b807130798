#!/usr/bin/env bash
# The whole suite: the import contracts (lint-imports), ruff and mypy (configured in pyproject.toml),
# then engine, command-line and GUI tests under Xvfb (the VTK view needs a real X server). Extra
# arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/lint-imports --no-cache >/dev/null || { .venv/bin/lint-imports --no-cache; exit 1; }
.venv/bin/ruff check --quiet .
.venv/bin/mypy >/dev/null || { .venv/bin/mypy; exit 1; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ -z "${DISPLAY:-}" ] && command -v xvfb-run >/dev/null 2>&1; then
    exec xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python -m pytest -q "$@"
fi
exec .venv/bin/python -m pytest -q "$@"
