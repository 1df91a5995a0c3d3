#!/usr/bin/env bash
# Command 1: compile the built-in example model end to end and write its report.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh
OUT="${1:-build/demo}"
.venv/bin/autoglm demo --out "$OUT"
