#!/usr/bin/env bash
# Build the separate virtual environment in which auto-circuit runs (it needs TransformerLens 2.x
# and an older transformers than circuitfind). Idempotent: a venv that already imports
# auto_circuit is left as it is. Usage: benchmarks/autocircuit/setup_venv.sh [DIR]
# DIR defaults to $CIRCUITFIND_AUTOCIRCUIT_VENV or .venv-autocircuit/ at the repository root
# (git-ignored).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DIR="${1:-${CIRCUITFIND_AUTOCIRCUIT_VENV:-$ROOT/.venv-autocircuit}}"
PY=${PYTHON:-python3}

if [ -x "$DIR/bin/python" ] && "$DIR/bin/python" -c "import auto_circuit, transformer_lens" 2>/dev/null; then
    echo "auto-circuit venv ready: $DIR"
    exit 0
fi
"$PY" -m venv "$DIR"
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
printf 'numpy<2\npyarrow<22\njax<0.7\njaxlib<0.7\ntorch==2.13.0\n' > "$CONSTRAINTS"
# torch first (the CPU wheel this machine carries), then the rest against it.
"$DIR/bin/pip" install --quiet "torch==2.13.0"
"$DIR/bin/pip" install --quiet -c "$CONSTRAINTS" "transformer-lens==2.18.0" auto-circuit attrs safetensors
"$DIR/bin/python" -c "import auto_circuit, transformer_lens; print('auto-circuit venv ready:', '$DIR')"
