#!/usr/bin/env bash
# Lint, type-check and test. `scripts/test.sh --slow` runs only the slow tier (zoo training,
# full benchmark passes). The README's second command and .ci/run both call this script.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

"$PY" -m ruff check . || exit 1
"$PY" -m ruff format --check . || exit 1
"$PY" -m mypy || exit 1

if [ "${1:-}" = "--slow" ]; then
    shift
    "$PY" -m pytest -m slow "$@"
else
    "$PY" -m pytest "$@"
fi
rc=$?
# pytest exits 5 when it collected no test: that is a failure of the suite, not a pass.
if [ $rc -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi
exit $rc
