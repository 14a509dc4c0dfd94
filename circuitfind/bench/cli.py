"""``circuitfind benchmark``: run benchmark suites and write their reports under ``--out``."""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import time
from pathlib import Path
from typing import Any

__all__ = ["register", "run_suites"]

logger = logging.getLogger(__name__)


def run_suites(
    names: list[str],
    out: Path,
    *,
    quick: bool,
    seed: int,
    model: str | None = None,
    echo: Any = None,
) -> dict[str, Any]:
    """Run the suites in order; one that fails or is missing is recorded and the rest still run.

    Returns ``{suite: {"status": ok|failed|missing|skipped, "seconds", "summary" | "error"}}``.
    """
    from circuitfind.bench import SuiteMissingError, get_suite
    from circuitfind.bench.common import command_line

    results: dict[str, Any] = {}
    for name in names:
        if echo:
            echo(f"[{name}] running{' (quick)' if quick else ''} ...")
        t0 = time.perf_counter()
        try:
            module = get_suite(name)
            kwargs: dict[str, Any] = {"quick": quick, "seed": seed}
            params = inspect.signature(module.run).parameters
            if model is not None and "model" in params:
                kwargs["model"] = model
            if "command" in params:  # suites that stamp their own reports get the real command
                kwargs["command"] = command_line()
            summary = module.run(out, **kwargs) or {}
            status = "skipped" if summary.get("skipped") else "ok"
            results[name] = {"status": status, "summary": summary}
        except SuiteMissingError as exc:
            results[name] = {"status": "missing", "error": str(exc)}
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            logger.debug("suite %s failed", name, exc_info=True)
            results[name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        results[name]["seconds"] = round(time.perf_counter() - t0, 1)
        if echo:
            r = results[name]
            detail = r.get("error") or r.get("summary", {}).get("skipped") or ""
            files = r.get("summary", {}).get("files", {})
            where = files.get("markdown") if isinstance(files, dict) else None
            echo(
                f"[{name}] {r['status']} in {r['seconds']} s"
                + (f": {detail}" if detail else "")
                + (f" -> {where}" if where else "")
            )
    return results


def _benchmark(args: argparse.Namespace) -> int:
    from circuitfind.bench import DEFAULT_SUITES, SUITES
    from circuitfind.bench.common import set_command
    from circuitfind.errors import InputError

    names = list(dict.fromkeys(args.suite or DEFAULT_SUITES))
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise InputError(
            f"unknown benchmark suite {', '.join(map(repr, unknown))}; choose from "
            f"{', '.join(SUITES)}"
        )
    if getattr(args, "command_line", None):
        set_command(args.command_line)
    out = Path(args.out)

    def echo(msg: str) -> None:
        if not args.json:
            print(msg, flush=True)

    results = run_suites(names, out, quick=args.quick, seed=args.seed, model=args.model, echo=echo)
    if args.json:
        print(json.dumps(results, default=str))
    failed = [n for n, r in results.items() if r["status"] in ("failed", "missing")]
    return 1 if failed else 0


def register(subparsers: Any) -> None:
    """Add the ``benchmark`` subcommand."""
    from circuitfind.bench import DEFAULT_SUITES, SUITES

    listing = "\n".join(f"  {name:<8} {desc}" for name, (_, desc) in SUITES.items())
    p = subparsers.add_parser(
        "benchmark",
        help="run the benchmark suites; write reports/*.md, *.json and plots",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run benchmark suites and write NAME.md (tables, plots) and NAME.json (raw results) "
            "under --out, each stamped with the command, machine, library versions and seed.\n\n"
            f"Suites (default: all, in this order):\n{listing}\n\n"
            "--quick finishes in a few minutes on 2 CPU cores (fewer prompts, methods and "
            "resamples; each report says what it skipped). A suite that fails is reported and "
            "the others still run (exit code 1 at the end)."
        ),
        epilog=(
            "examples:\n"
            "  circuitfind benchmark --quick\n"
            "  circuitfind benchmark --suite known compare --out reports/\n"
            "  circuitfind benchmark --suite gpt2 --model /path/to/gpt2"
        ),
    )
    p.add_argument(
        "--suite",
        nargs="+",
        metavar="NAME",
        help=f"suites to run (default: {' '.join(DEFAULT_SUITES)})",
    )
    p.add_argument("--quick", action="store_true", help="the few-minute version of each suite")
    p.add_argument(
        "--out", default="reports", metavar="DIR", help="report directory (default: reports)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of prompts and resamples (default 0)")
    p.add_argument(
        "--model",
        default=None,
        metavar="SRC",
        help="GPT-2 small for the gpt2 suite: 'gpt2' (from the HF cache) or a local directory",
    )
    p.add_argument("--json", action="store_true", help="print the per-suite results as JSON")
    p.set_defaults(func=_benchmark)
