"""``circuitfind benchmark``: run benchmark suites and write their reports under ``--out``.

The one entry point of every suite in :data:`circuitfind.bench.SUITES`; ``python -m benchmarks``
is an alias.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import time
from pathlib import Path
from typing import Any

__all__ = ["parse_options", "register", "run_suites"]

logger = logging.getLogger(__name__)


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``["repeat=2", "autocircuit=false"]`` -> ``{"repeat": 2, "autocircuit": False}`` (values
    read as JSON where they parse, else kept as text; ``-`` in names read as ``_``)."""
    from circuitfind.errors import InputError

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set {item!r}: write NAME=VALUE, e.g. --set repeat=2")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip().replace("-", "_")] = value
    return out


def _accepts(fn: Any) -> tuple[set[str], bool]:
    """(keyword names ``fn`` takes, whether it takes ``**kwargs``)."""
    params = inspect.signature(fn).parameters
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return set(params), var_kw


def run_suites(
    names: list[str],
    out: Path,
    *,
    quick: bool,
    seed: int,
    model: str | None = None,
    options: dict[str, Any] | None = None,
    echo: Any = None,
) -> dict[str, Any]:
    """Run the suites in order; one that fails or is missing is recorded and the rest still run.

    Each suite gets ``quick``, ``seed``, its table options for a quick or full run, then those
    of ``options`` (``--set``) that its function takes, and ``model`` / ``command`` when it takes
    them. Returns ``{suite: {"status": ok|failed|missing|skipped, "seconds", "summary" |
    "error"}}``.
    """
    from circuitfind.bench import SuiteMissingError, get_suite
    from circuitfind.bench.common import command_line

    results: dict[str, Any] = {}
    for name in names:
        if echo:
            echo(f"[{name}] running{' (quick)' if quick else ''} ...")
        t0 = time.perf_counter()
        try:
            suite = get_suite(name)
            fn = suite.load()
            kwargs: dict[str, Any] = {"quick": quick, "seed": seed, **suite.options(quick)}
            params, var_kw = _accepts(fn)
            kwargs.update({k: v for k, v in (options or {}).items() if var_kw or k in params})
            if model is not None and ("model" in params or var_kw):
                kwargs["model"] = model
            if "command" in params:  # suites that stamp their own reports get the real command
                kwargs["command"] = command_line()
            summary = fn(out, **kwargs) or {}
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


def _check_options(names: list[str], options: dict[str, Any]) -> None:
    """Every ``--set`` option is taken by at least one of the chosen suites."""
    from circuitfind.bench import SuiteMissingError, get_suite
    from circuitfind.errors import InputError

    taken: set[str] = set()
    for name in names:
        try:
            params, var_kw = _accepts(get_suite(name).load())
        except SuiteMissingError:
            continue
        if var_kw:
            return
        taken |= params
    unknown = sorted(set(options) - taken)
    if unknown:
        raise InputError(
            f"--set {', '.join(unknown)}: no chosen suite takes that option (suites: "
            f"{', '.join(names)}; see `circuitfind benchmark --help`)"
        )


def _benchmark(args: argparse.Namespace) -> int:
    from circuitfind.bench import SUITES, default_suites
    from circuitfind.bench.common import set_command
    from circuitfind.errors import InputError

    names = [n.replace("_", "-") for n in (args.suite or default_suites())]
    if "all" in names:
        names = list(SUITES)
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise InputError(
            f"unknown benchmark suite {', '.join(map(repr, unknown))}; choose from "
            f"{', '.join(SUITES)}"
        )
    options = parse_options(args.set)
    if options:
        _check_options(names, options)
    if getattr(args, "command_line", None):
        set_command(args.command_line)
    out = Path(args.out)

    def echo(msg: str) -> None:
        if not args.json:
            print(msg, flush=True)

    results = run_suites(
        names,
        out,
        quick=args.quick,
        seed=args.seed,
        model=args.model,
        options=options,
        echo=echo,
    )
    if args.json:
        print(json.dumps(results, default=str))
    failed = [n for n, r in results.items() if r["status"] in ("failed", "missing")]
    return 1 if failed else 0


def _listing() -> str:
    from circuitfind.bench import SUITES

    lines = []
    for name, s in SUITES.items():
        lines.append(f"  {name:<10} {s.summary}" + ("" if s.default else " [named only]"))
    return "\n".join(lines)


def register(subparsers: Any) -> None:
    """Add the ``benchmark`` subcommand."""
    from circuitfind.bench import default_suites

    p = subparsers.add_parser(
        "benchmark",
        help="run the benchmark suites; write reports/*.md, *.json and plots",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run benchmark suites and write NAME.md (tables, plots) and NAME.json (raw results) "
            "under --out, each stamped with the command, machine, library versions and seed.\n\n"
            f"Suites (default: those not marked [named only], in this order):\n{_listing()}\n\n"
            "--quick finishes in a few minutes on 2 CPU cores (fewer prompts, methods and "
            "resamples; each report says what it skipped). A suite that fails is reported and "
            "the others still run (exit code 1 at the end)."
        ),
        epilog=(
            "examples:\n"
            "  circuitfind benchmark --quick\n"
            "  circuitfind benchmark --suite known compare --out reports/\n"
            "  circuitfind benchmark --suite speed --set autocircuit=false\n"
            "  circuitfind benchmark --suite gpt2 --model /path/to/gpt2\n"
            "  python -m benchmarks --suite zoo       (the same entry point)"
        ),
    )
    p.add_argument(
        "--suite",
        nargs="+",
        metavar="NAME",
        help=f"suites to run, or 'all' (default: {' '.join(default_suites())})",
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
    p.add_argument(
        "--set",
        action="append",
        default=None,
        metavar="NAME=VALUE",
        help="a suite option, e.g. --set autocircuit=false (speed), --set build_venv=true "
        "(speed), --set repeat=2 (pass-size); repeatable",
    )
    p.add_argument("--json", action="store_true", help="print the per-suite results as JSON")
    p.set_defaults(func=_benchmark)
