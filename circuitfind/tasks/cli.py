"""``circuitfind tasks``: list the built-in tasks and metrics, and show the JSONL format."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["register"]


def _tasks(args: argparse.Namespace) -> int:
    from circuitfind.tasks import METRICS, TASKS
    from circuitfind.tasks.jsonl import FORMAT

    if args.json:
        print(
            json.dumps(
                {
                    "tasks": {
                        t.name: {"metric": t.metric, "summary": t.summary} for t in TASKS.values()
                    },
                    "metrics": {m.name: m.description for m in METRICS.values()},
                }
            )
        )
        return 0
    print("Built-in tasks (--task NAME):")
    for t in TASKS.values():
        print(f"  {t.name:<14} {t.summary}  [metric: {t.metric}]")
    print("\nMetrics (--metric NAME):")
    for m in METRICS.values():
        print(f"  {m.name:<14} {m.description}")
    print("\nCustom prompt sets (--task FILE.jsonl):")
    print("\n".join("  " + line for line in FORMAT.strip().splitlines()))
    return 0


def register(subparsers: Any) -> None:
    """Add the ``tasks`` subcommand."""
    p = subparsers.add_parser(
        "tasks",
        help="list built-in tasks and metrics; show the JSONL prompt format",
        description="List the built-in tasks and metrics and document the JSONL prompt format.",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_tasks)
