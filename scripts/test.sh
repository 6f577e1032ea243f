#!/usr/bin/env bash
# Runs lint and the whole test suite. napari needs an OpenGL context: xvfb-run gives it a virtual
# screen with Mesa (QT_QPA_PLATFORM=offscreen has no OpenGL). Assumes scripts/setup.sh has run.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
# Numba and matplotlib want writable caches; keep them inside the checkout.
export MPLCONFIGDIR="${MPLCONFIGDIR:-$PWD/.cache/matplotlib}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
exec xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python -m pytest "$@"
