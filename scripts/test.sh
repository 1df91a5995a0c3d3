#!/usr/bin/env bash
# Command 2: run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh --browser  # Chromium for the report's browser tests
.venv/bin/python -m pytest -q "$@"
