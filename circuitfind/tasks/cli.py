"""``circuitfind tasks``: list the built-in tasks and metrics, and show the JSONL format.

The subcommand's parser is built in ``circuitfind.cli`` (importing this package loads torch,
which ``--help`` must not wait for); :func:`run` is its handler."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

__all__ = ["plain_text", "register", "run"]


def plain_text(text: str) -> str:
    """reStructuredText as a terminal shows it: ``code`` and :role:`name` without their
    markup, a literal block's ``::`` as ``:``; the API's ``first_token=True`` with its flag."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
    text = re.sub(r"``([^`]+)``", r"\1", text)
    text = re.sub(r"(?<=\S)::(?=\s*$)", ":", text, flags=re.M)
    text = re.sub(r"(?m)^(\s*)::\s*$", "", text)
    return text.replace("first_token=True", "first_token=True (--first-token)")


def run(args: argparse.Namespace) -> int:
    """Print the built-in tasks, the metrics and the JSONL format (or JSON with ``--json``)."""
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
    print("\nMetrics (--metric NAME on discover and evaluate):")
    for m in METRICS.values():
        better = "higher is better" if m.higher_is_better else "lower is better"
        print(f"  {m.name:<14} {m.description} ({better})")
    print("\nCustom prompt sets (--task FILE.jsonl):")
    print("\n".join(("  " + line).rstrip() for line in plain_text(FORMAT).strip().splitlines()))
    return 0


def register(subparsers: Any) -> None:
    """Add the ``tasks`` subcommand to ``subparsers`` (as ``circuitfind.cli`` does)."""
    from circuitfind.cli import add_tasks_parser

    add_tasks_parser(subparsers)
