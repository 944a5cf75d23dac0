#!/usr/bin/env bash
# The test command (README, step 2; CI runs it through .ci/run): lint, format and types over the
# code (seconds), then the test suite. Extra arguments go to pytest (e.g. -x, -k name, -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest -q --durations=15 "$@"  # the slowest tests, to watch the 15-minute budget
