#!/usr/bin/env bash
# The main job on the bundled default: discover the induction circuit of the zoo's two-layer
# model, write the circuit, its diagram and its report under runs/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
circuitfind doctor
circuitfind discover --model zoo:induction-2l --task induction --method eap-ig-inputs \
    --out runs/quickstart
