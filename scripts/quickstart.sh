#!/usr/bin/env bash
# The main job on the bundled default model.
set -euo pipefail
cd "$(dirname "$0")/.."
circuitfind doctor
