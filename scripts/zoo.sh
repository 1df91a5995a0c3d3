#!/usr/bin/env bash
# Run the full model zoo (every model x every configuration, tests/zoo/) and
# rewrite docs/zoo.md with its table. Sets up .venv first if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh
exec .venv/bin/python -m tests.zoo.run --tier full --write docs/zoo.md "$@"
