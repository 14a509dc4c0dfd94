"""Speed of each scoring method against the bare Hugging Face forward/backward, in one run.

A thin wrapper: the suite lives in ``circuitfind.bench.speed`` (also run by
``circuitfind benchmark --suite speed``). Same options:

    python -m benchmarks.speed [--quick] [--out reports/] [--seed 0] [--no-autocircuit]
"""

from __future__ import annotations

from circuitfind.bench.speed import main

if __name__ == "__main__":
    main()
