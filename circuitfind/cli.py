"""The ``circuitfind`` command line: one entry point, one subcommand per job.

Exit codes: 0 success; 2 a usage or input problem the user can fix (one line on stderr naming
the fix, no traceback unless ``--debug``); 1 an internal error (one line and a hint to rerun
with ``--debug``); 130 when interrupted with Ctrl-C (the message says what was kept).

The parser is built from the standard library alone: torch, transformers and the zoo's
training recipes are imported only when a command runs, so ``--help`` answers at once.

Subcommands from other modules register themselves: each of ``circuitfind.zoo.cli``,
``circuitfind.inspect.cli`` and ``circuitfind.bench.cli`` provides ``register(subparsers)``
and imports nothing heavy at module level.

JSON output (``--json``) uses the circuit's own key names: ``n_edges`` (edges in the
circuit), ``n_edges_total`` (edges in the model's graph), ``faithfulness``, ``metric``
(``{"name", "higher_is_better"}``) and, for discover, ``timing`` (seconds per phase).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shlex
import sys
import time
from typing import Any

from circuitfind.cli_base import (
    _API_HINTS,
    ABLATIONS,
    METRICS,
    PLUGINS,
    STARTED,
    TASKS,
    _cgroup_cpus,
    _fraction,
    _Help,
    _methods,
    _non_negative,
    _Parser,
    _positive_int,
    _set_threads,
    available_cpus,
    thread_count,
)
from circuitfind.commands import (
    _add_method_options,
    _add_model_args,
    _count_unknown,
    _discover,
    _doctor,
    _evaluate,
    _lazy,
    _load_model_and_task,
    _plan,
    _progress,
    _render,
    quiet_third_party,
)
from circuitfind.errors import CircuitfindError
from circuitfind.stability_summary import resamples_arg

__all__ = [
    "ABLATIONS",
    "METRICS",
    "TASKS",
    "available_cpus",
    "build_parser",
    "main",
    "quiet_third_party",
    "thread_count",
]
# re-exported for the subcommand modules and tests: the names as the command line knows them
_REEXPORTED = (_cgroup_cpus, _count_unknown, _load_model_and_task, _progress)

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- the parser
def _choices_text(title: str, table: dict[str, str]) -> str:
    width = max(len(k) for k in table)
    return f"{title}:\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in table.items())


def _add_global_args(p: argparse.ArgumentParser, *, top: bool) -> None:
    """The options accepted before and after the subcommand (``SUPPRESS`` defaults on the
    subcommands, so one given before the name is not reset by the subparser)."""
    default: Any = None if top else argparse.SUPPRESS
    flag: Any = False if top else argparse.SUPPRESS
    taken = set(p._option_string_actions)  # a subcommand's own option of the same name wins
    if "--debug" not in taken:
        p.add_argument("--debug", action="store_true", default=flag, help="show tracebacks")
    if "--verbose" not in taken:
        p.add_argument("-v", "--verbose", action="store_true", default=flag, help="log more")
    if "--quiet" not in taken:
        p.add_argument(
            "-q", "--quiet", action="store_true", default=flag, help="no progress bars (stderr)"
        )
    if "--threads" in taken:
        return
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=default,
        metavar="N",
        help="torch CPU threads (when not given: $OMP_NUM_THREADS, else the cores this process "
        "may use, from os.sched_getaffinity and any cgroup quota)",
    )


def add_tasks_parser(sub: Any) -> None:
    """The ``tasks`` subcommand (defined here: importing ``circuitfind.tasks`` loads torch)."""
    tasks = sub.add_parser(
        "tasks",
        help="list built-in tasks and metrics; show the JSONL prompt format",
        description="List the built-in tasks and metrics and document the JSONL prompt format.",
        formatter_class=_Help,
    )
    tasks.add_argument("--json", action="store_true", help="print JSON")
    tasks.set_defaults(func=_lazy("circuitfind.tasks.cli", "run"))


def _walk(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found.extend(_walk(child))
    return found


def build_parser() -> argparse.ArgumentParser:
    """The ``circuitfind`` parser (imports nothing heavy)."""
    parser = _Parser(
        prog="circuitfind",
        description="Find, evaluate and draw circuits in transformer language models.",
        epilog=(
            "quickstart:\n"
            "  circuitfind discover --model zoo:NAME --task induction --out out/\n"
            "  circuitfind render out/circuit.json -o out/circuit.png\n"
            "  circuitfind evaluate out/circuit.json --model zoo:NAME --task induction\n\n"
            "exit codes: 0 done; 2 a problem with the input (one line naming the fix); "
            "1 an internal error;\n130 interrupted. --debug, -v, -q and --threads go before or "
            "after the subcommand."
        ),
        formatter_class=_Help,
    )
    _add_global_args(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    doctor = sub.add_parser("doctor", help="check that the install works", formatter_class=_Help)
    doctor.add_argument("--json", action="store_true", help="print JSON")
    doctor.set_defaults(func=_doctor)

    add_tasks_parser(sub)

    d = sub.add_parser(
        "discover",
        help="find a circuit for a task; write circuit.json, circuit.svg, report.html and "
        "explorer.html",
        formatter_class=_Help,
        description=(
            "Score every edge of the model's graph on the task, keep the important ones, and "
            "write DIR/circuit.json, DIR/circuit.svg (+ .gv), DIR/report.html and "
            "DIR/explorer.html (interactive; circuitfind serve DIR re-evaluates it live).\n\n"
            + _choices_text("tasks (--task NAME, or a .jsonl file: see `circuitfind tasks`)", TASKS)
            + "\n\n"
            + _choices_text("methods (--method)", _methods())
            + "\n\n"
            + _choices_text(
                "ablations (--ablation): an edge outside the circuit carries", ABLATIONS
            )
            + "\n\npruning: --top-n N edges, --threshold T on |score|, or the smallest circuit "
            "reaching --target-faithfulness F (at most one; F = 0.9 when none is given)."
        ),
    )
    _add_model_args(d)
    d.add_argument("--method", default="eap-ig-inputs", help="how edges are scored (see above)")
    d.add_argument("--ablation", default="resample", help="what a pruned edge carries (see above)")
    prune = d.add_mutually_exclusive_group()
    prune.add_argument("--top-n", type=_positive_int, metavar="N", help="keep the N best edges")
    prune.add_argument(
        "--threshold", type=_non_negative, metavar="T", help="keep edges with |score| >= T"
    )
    prune.add_argument(
        "--target-faithfulness",
        type=_fraction,
        metavar="F",
        help="the smallest circuit reaching faithfulness F (0.9 when no rule is given)",
    )
    d.add_argument(
        "--batch-size", type=_positive_int, metavar="B", help="prompts per forward pass (32)"
    )
    _add_method_options(d)
    _add_max_memory(d)
    d.add_argument(
        "--greedy", action="store_true", help="with --top-n: grow from the logits (EAP-IG greedy)"
    )
    _add_positions(d)
    d.add_argument(
        "--out", metavar="DIR", help="output directory (when not given: circuits/MODEL_TASK_METHOD)"
    )
    d.add_argument(
        "--yes",
        action="store_true",
        help="start even when the run is estimated to take over 10 minutes or more memory "
        "than the machine has (without a terminal such a run otherwise stops with an error)",
    )
    d.add_argument(
        "--bootstrap",
        default="auto",
        type=resamples_arg,
        metavar="N",
        help="resample the prompts N times, re-score and re-prune with the same rule: each "
        "edge's inclusion frequency, a core / contingent split and intervals on faithfulness, "
        "CPR and CMD (auto: 20 for attribution methods on graphs up to 10,000 edges and for "
        "exact / node up to 1,000, else 0; 0 turns it off)",
    )
    d.add_argument(
        "--ensemble",
        metavar="M1,M2",
        help="also run these methods over the same prepared runs, pruned by the same rule, "
        "and report per-edge agreement across them (e.g. eap-ig-inputs,exact)",
    )
    d.add_argument(
        "--certify",
        action="store_true",
        help="fast scores (--method) -> optional learned mask (--mask-method) -> circuit -> "
        "faithfulness verified by patching -> attribution vs exact patching near the cut",
    )
    d.add_argument(
        "--mask-method",
        default="auto",
        metavar="NAME",
        help="with --certify: the mask step's method (auto: edge-pruning when it is a method, "
        "else none; none skips it)",
    )
    d.add_argument(
        "--candidates",
        default="auto",
        metavar="M1,M2",
        help="with --certify: the edge rankings compared by their patched CPR before the "
        "circuit is chosen (auto: the fast scores, the mask warm and cold, and exact when it "
        "costs no more than the mask; none: compare nothing; or method names, NAME:cold for a "
        "mask's cold start)",
    )
    d.add_argument(
        "--frontier",
        type=_positive_int,
        default=64,
        metavar="K",
        help="with --certify: edges around the cut patched one by one to check attribution",
    )
    d.add_argument(
        "--mib",
        action="store_true",
        help="also write DIR/mib/TASK_MODEL/importances.json, the MIB circuit-localization "
        "track's importance-score format",
    )
    d.add_argument("--json", action="store_true", help="print the summary as JSON")
    d.set_defaults(func=_discover)

    pl = sub.add_parser(
        "plan",
        help="the memory plan of a run (each term, the peak, the batch size) without running it",
        formatter_class=_Help,
        description=(
            "Estimate the peak memory of --method on the task from the model's shape, the "
            "prompts, the batch size and the dtype: the parameters, what the prepared runs "
            "keep for every prompt (ablated values, clean caches), one batch's activations, "
            "gradient probes and score sums. Without --batch-size it chooses the largest batch "
            "(up to 32) that fits --max-memory (default: what the device has free), and stops "
            "with exit code 1 when the run does not fit."
        ),
    )
    _add_model_args(pl)
    pl.add_argument("--method", default="eap-ig-inputs", help="the method to plan (see discover)")
    pl.add_argument("--ablation", default="resample", help="what an ablated edge carries")
    pl.add_argument(
        "--batch-size", type=_positive_int, metavar="B", help="plan this batch size (default: "
        "choose one that fits)"
    )  # fmt: skip
    _add_method_options(pl)
    _add_max_memory(pl)
    _add_positions(pl)
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    pl.set_defaults(func=_plan)

    e = sub.add_parser(
        "evaluate",
        help="faithfulness of a saved circuit on a task",
        formatter_class=_Help,
        description="Run the model with only the circuit's edges and report its faithfulness.\n\n"
        + _choices_text("tasks (--task NAME, or a .jsonl file)", TASKS),
    )
    e.add_argument("circuit", metavar="CIRCUIT.json")
    _add_model_args(e)
    e.add_argument("--ablation", help="override the circuit's ablation: " + ", ".join(ABLATIONS))
    e.add_argument("--no-curve", action="store_true", help="skip the faithfulness curve")
    e.add_argument("--json", action="store_true", help="print JSON")
    e.set_defaults(func=_evaluate)

    r = sub.add_parser(
        "render",
        help="draw a saved circuit (svg, png, pdf, gv) or write its HTML report (html)",
        formatter_class=_Help,
        description=(
            "Draw CIRCUIT.json with graphviz. The output format follows the suffix of -o: "
            ".svg, .png, .pdf, .gv (DOT only, needs no graphviz) or .html (the report). Head "
            "roles come from the file (saved by discover) or, with --model and --task, are "
            "detected afresh. Circuits of more than 150 edges are drawn with their strongest "
            "150 (the picture says how many it leaves out)."
        ),
    )
    r.add_argument("circuit", metavar="CIRCUIT.json")
    r.add_argument(
        "-o", "--output", metavar="FILE", help="the picture (when not given: CIRCUIT.svg)"
    )
    r.add_argument("--model", metavar="SRC", help="detect head roles with this model")
    r.add_argument("--task", help="... on this task's prompts")
    r.add_argument("--n", type=_positive_int, default=32, metavar="PROMPTS", help=argparse.SUPPRESS)
    r.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    r.add_argument("--device", help=argparse.SUPPRESS)
    r.add_argument("--dtype", help=argparse.SUPPRESS)
    r.set_defaults(func=_render)

    for name in PLUGINS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
                raise  # the module exists but something it imports is missing
            continue
        module.register(sub)
    for child in _walk(parser)[1:]:
        _add_global_args(child, top=False)
        # each default shown once, and only when it says something
        if child.formatter_class in (argparse.HelpFormatter, argparse.RawDescriptionHelpFormatter):
            child.formatter_class = _Help
        for action in child._actions:
            if (
                action.help is None
                and action.option_strings
                and action.default
                not in (
                    None,
                    False,
                    True,
                    argparse.SUPPRESS,
                )
            ):
                action.help = "(default: %(default)s)"
    return parser


def _add_positions(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--positions",
        metavar="all|SPANS",
        help="position-aware edges: 'all' (one edge per position) or span names, e.g. "
        "S1,IO,S2,END for ioi (exact, eap, eap-ig, edge-pruning, ugs)",
    )


def _add_max_memory(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-memory",
        metavar="SIZE",
        help="memory budget for the run, e.g. 4GiB or 512MB (default: what the device has "
        "free); without --batch-size the batch size is chosen to fit it",
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    for api, flag in _API_HINTS.items():
        if api in text and flag not in text:
            text = text.replace(api, f"{api} (on the command line: {flag})")
    return text


def _user_error(exc: BaseException) -> str | None:
    """The one-line message for an exception the user can fix, or None for an internal error."""
    if isinstance(exc, CircuitfindError):
        return _one_line(exc)
    if isinstance(exc, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({exc.reason} at byte {exc.start}): save it as UTF-8"
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        where = f" {exc.filename}" if exc.filename else ""
        return f"cannot use{where}: {exc.strerror or exc}; check the path and its permissions"
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    STARTED[0] = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["circuitfind", *argv])
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from circuitfind.checkpoint import terminate_as_interrupt

    try:
        _set_threads(args)
        with terminate_as_interrupt():  # SIGTERM ends like Ctrl-C: a message, exit code 130
            return int(args.func(args) or 0)
    except BrokenPipeError:  # `circuitfind ... | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except KeyboardInterrupt as exc:
        if str(exc):  # checkpoint.Interrupted: says what was kept, or that nothing was
            print(str(exc), file=sys.stderr)
        else:
            partial = getattr(args, "partial", None)
            print("interrupted" + (f"; {partial}" if partial else ""), file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        message = _user_error(exc)
        if message is not None:
            print(f"error: {message}", file=sys.stderr)
            return 2
        print(
            f"internal error: {type(exc).__name__}: {_one_line(exc)} "
            "(rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
