#!/usr/bin/env bash
# Build the separate virtual environment in which the EAP-IG reference code (hannamw/EAP-IG, on
# TransformerLens) runs. The EAP-IG source is not vendored: pass a checkout of it (outside this
# repository). Idempotent: a venv that already imports eap and transformer_lens is left as it is.
# Usage: benchmarks/eapig/setup_venv.sh EAPIG_SOURCE [DIR]
# DIR defaults to $CIRCUITFIND_EAPIG_VENV or .venv-eapig/ at the repository root (git-ignored).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
SRC="${1:?usage: setup_venv.sh EAPIG_SOURCE [DIR]}"
DIR="${2:-${CIRCUITFIND_EAPIG_VENV:-$ROOT/.venv-eapig}}"
PY=${PYTHON:-python3}

if [ -x "$DIR/bin/python" ] && "$DIR/bin/python" -c "import eap.attribute, transformer_lens" 2>/dev/null; then
    echo "EAP-IG venv ready: $DIR"
    exit 0
fi
"$PY" -m venv "$DIR"
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
printf 'numpy<2\npyarrow<22\ntorch==2.13.0\n' > "$CONSTRAINTS"
# torch first (the CPU wheel this machine carries), then TransformerLens against it: 2.18 with
# the transformers it was released with (TransformerLens 4 removed HookedTransformer, and an
# open range makes pip backtrack for many minutes).
"$DIR/bin/pip" install --quiet "torch==2.13.0"
"$DIR/bin/pip" install --quiet -c "$CONSTRAINTS" "transformer-lens==2.18.0" "transformers==4.57.6" einops tqdm matplotlib safetensors
"$DIR/bin/pip" install --quiet --no-deps "$SRC"
"$DIR/bin/python" -c "import eap.attribute, transformer_lens; print('EAP-IG venv ready:', '$DIR')"
