"""``python -m benchmarks [--quick] [--suite NAME ...] [--out reports/] [--seed S]``: the same as
``circuitfind benchmark``."""

from __future__ import annotations

import sys

from circuitfind.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
