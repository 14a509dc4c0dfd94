"""The ``circuitfind`` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from circuitfind.errors import CircuitfindError
from circuitfind.inspect.cli import register as register_inspect

__all__ = ["main"]


def _doctor(args: argparse.Namespace) -> int:
    import shutil

    import torch
    import transformers

    from circuitfind import __version__

    info = {
        "circuitfind": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dot": shutil.which("dot") or "missing (apt-get install graphviz)",
    }
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key:>14}: {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="circuitfind",
        description="Find, evaluate and draw circuits in transformer language models.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    doctor = sub.add_parser("doctor", help="check that the install works")
    doctor.add_argument("--json", action="store_true", help="print JSON")
    doctor.set_defaults(func=_doctor)
    register_inspect(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if not args.debug else logging.DEBUG, format="%(message)s"
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CircuitfindError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
