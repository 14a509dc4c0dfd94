"""The ``circuitfind`` command line: one entry point, one subcommand per job.

Exit codes: 0 success; 2 a usage or input error (one line on stderr, no traceback unless
``--debug``); 1 an internal error (one line and a hint to rerun with ``--debug``); 130 when
interrupted with Ctrl-C (the message says where partial results are).

Subcommands from other modules register themselves: each of ``circuitfind.tasks.cli``,
``circuitfind.zoo.cli`` and ``circuitfind.inspect.cli`` that exists provides
``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from circuitfind.errors import CircuitfindError, InputError
from circuitfind.methods.table import METHODS as _ENGINE_METHODS
from circuitfind.methods.table import method_name, method_spec
from circuitfind.patching import ABLATIONS as _ENGINE_ABLATIONS
from circuitfind.patching import ablation_kind

__all__ = ["METHODS", "build_parser", "main"]

logger = logging.getLogger(__name__)

METHODS: tuple[str, ...] = tuple(_ENGINE_METHODS)
ABLATIONS: tuple[str, ...] = tuple(_ENGINE_ABLATIONS)
PLUGINS = (
    "circuitfind.tasks.cli",
    "circuitfind.zoo.cli",
    "circuitfind.inspect.cli",
    "circuitfind.bench.cli",
)


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


# ---------------------------------------------------------------------------- helpers
def _engine(name: str) -> Any:
    """``circuitfind.discover`` / ``circuitfind.evaluate``, looked up at call time (so the CLI
    wiring tests can substitute them)."""
    import circuitfind

    fn = getattr(circuitfind, name, None)
    if fn is None:
        raise RuntimeError(f"this build of circuitfind has no {name}()")
    return fn


def _progress(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()


def _load_model_and_task(args: argparse.Namespace) -> tuple[Any, Any]:
    import transformers

    from circuitfind.loading import load
    from circuitfind.tasks import get_task

    if not (args.verbose or args.debug):
        transformers.logging.set_verbosity_error()
    if not _progress(args):
        transformers.logging.disable_progress_bar()
    model = load(args.model, device=args.device, dtype=args.dtype)
    task = get_task(args.task, model, n=args.n, seed=args.seed)
    return model, task


def _check_shape(circuit: Any, model: Any, source: str) -> None:
    c, m = circuit.graph.cfg, model.cfg
    if (c.n_layers, c.n_heads, c.parallel_attn_mlp) != (m.n_layers, m.n_heads, m.parallel_attn_mlp):
        raise InputError(
            f"{source} is a circuit of a model with {c.n_layers} layers x {c.n_heads} heads, "
            f"but the model has {m.n_layers} x {m.n_heads}"
        )


def _roles_from_meta(circuit: Any) -> dict[str, Any] | None:
    from circuitfind.roles import Role

    saved = circuit.meta.get("roles")
    if not isinstance(saved, dict):
        return None
    return {
        head: Role(head, entry.get("role", "unlabelled"), float(entry.get("score", 0.0)))
        for head, entry in saved.items()
        if isinstance(entry, dict)
    }


def _roles_to_meta(roles: dict[str, Any]) -> dict[str, Any]:
    return {h: {"role": r.name, "score": round(r.score, 4)} for h, r in roles.items()}


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="SRC", help="hub name, directory, zoo:NAME")
    p.add_argument("--task", required=True, help="built-in task name or a .jsonl prompt file")
    p.add_argument("--n", type=int, default=64, metavar="PROMPTS", help="number of prompt pairs")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt generator")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cpu)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16")


# ---------------------------------------------------------------------------- doctor
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
        "chromium": shutil.which("chromium") or "missing (optional: apt-get install chromium)",
    }
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key:>14}: {value}")
    return 0


# ---------------------------------------------------------------------------- discover
def _add_method_options(parser: argparse.ArgumentParser) -> None:
    """One ``--option`` for every option of every method in the table, with the methods that
    take it and their default."""
    takers: dict[str, list[Any]] = {}
    for spec in _ENGINE_METHODS.values():
        for name, default in spec.options.items():
            takers.setdefault(name, []).append((spec, default))
    for name, rows in takers.items():
        default = rows[0][1]
        text = rows[0][0].option_help.get(name, name)
        names = ", ".join(spec.name for spec, _ in rows)
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=type(default),
            metavar=name.split("_")[-1].upper(),
            help=f"{text} ({names}; default {default})",
        )


def _discover(args: argparse.Namespace) -> int:
    method = method_name(args.method)
    ablation = ablation_kind(args.ablation)
    from circuitfind.checkpoint import OutputLock, default_out_dir, prepare_out_dir
    from circuitfind.checks import check_options

    check_options(
        batch_size=args.batch_size,
        steps=args.steps,
        n=args.n,
        top_n=args.top_n,
        threshold=args.threshold,
        target_faithfulness=args.target_faithfulness,
        tau=args.tau,
    )
    start = time.perf_counter()
    task_name = Path(args.task).stem if args.task.endswith(".jsonl") else args.task
    out = Path(
        args.out or default_out_dir(args.model, task_name, method, ablation, args.seed, args.n)
    )
    prepare_out_dir(out, args.command_line)  # before the work: a bad --out fails now
    with OutputLock(out):  # one writer per output directory
        return _discover_into(args, out, method, ablation, start)


def _discover_into(
    args: argparse.Namespace, out: Path, method: str, ablation: str, start: float
) -> int:
    from circuitfind.render import GraphvizNotFoundError, render
    from circuitfind.report import head_scores, write_report
    from circuitfind.roles import detect_roles
    from circuitfind.strict_json import dumps

    model, task = _load_model_and_task(args)
    discover = _engine("discover")
    checkpoint = out / "checkpoint"  # exact and acdc say what they kept when interrupted
    options: dict[str, Any] = {"seed": args.seed}
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    spec = method_spec(method)
    for name in spec.options:  # the method's own options, from its table row
        options[name] = getattr(args, name, None)
    circuit = discover(
        model,
        task,
        method=method,
        ablation=ablation,
        top_n=args.top_n,
        threshold=args.threshold,
        target_faithfulness=args.target_faithfulness,
        greedy_growth=args.greedy,
        curve=True,
        progress=_progress(args),
        checkpoint_dir=checkpoint,
        **options,
    )
    circuit.meta.setdefault("model", args.model)
    circuit.meta["command"] = args.command_line
    heads = [n for n in circuit.nodes if n.startswith("a")]
    roles = detect_roles(model, task, heads=heads) if heads else {}
    circuit.meta["roles"] = _roles_to_meta(roles)
    files = {"circuit": str(circuit.to_json(out / "circuit.json"))}
    args.partial = f"the circuit is saved in {files['circuit']}"

    try:
        files["diagram"] = str(render(circuit, out / "circuit.svg", roles=roles))
    except GraphvizNotFoundError as exc:
        print(f"warning: {exc}", file=sys.stderr)
    files["dot"] = str(out / "circuit.gv")

    evaluation = circuit.meta["evaluation"]  # measured by discover over the same runs
    files["report"] = str(
        write_report(
            circuit,
            out / "report.html",
            evaluation=evaluation,
            task=task,
            command=args.command_line,
            roles=roles,
        )
    )
    elapsed = time.perf_counter() - start

    faith = evaluation.get("faithfulness")
    ranked = sorted(head_scores(circuit).items(), key=lambda kv: -abs(kv[1]))[:5]
    top = [
        {
            "head": h,
            "label": circuit.graph.nodes[h].label,
            "score": s,
            "role": roles[h].name if h in roles else "unlabelled",
            "role_score": roles[h].score if h in roles else 0.0,
        }
        for h, s in ranked
    ]
    summary = {
        "model": args.model,
        "task": task.name,
        "method": method,
        "ablation": ablation,
        "edges": circuit.n_edges,
        "total_edges": circuit.graph.n_edges,
        "nodes": circuit.nodes,
        "faithfulness": faith,
        "metrics": circuit.meta.get("metrics"),
        "top_heads": top,
        "time_s": round(elapsed, 3),
        "discovery_time_s": circuit.meta.get("time_s"),
        "files": files,
    }
    if args.json:
        print(dumps(summary))
        return 0
    share = 100 * circuit.n_edges / max(1, circuit.graph.n_edges)
    print(
        f"circuit: {circuit.n_edges} of {circuit.graph.n_edges} edges ({share:.1f}%), "
        f"{len(circuit.nodes)} nodes"
    )
    if faith is not None:
        print(f"faithfulness: {faith:.3f}")
    if top:
        print(
            "top heads: "
            + ", ".join(
                f"{t['label']} {t['role']}"
                + (f" ({t['role_score']:.2f})" if t["role_score"] else "")
                for t in top
            )
        )
    print(f"time: {elapsed:.1f} s")
    print(f"wrote: {', '.join(files.values())}")
    return 0


# ---------------------------------------------------------------------------- evaluate
def _evaluate(args: argparse.Namespace) -> int:
    from circuitfind.circuit import Circuit

    circuit = Circuit.from_json(args.circuit)
    ablation = None if args.ablation is None else ablation_kind(args.ablation)
    model, task = _load_model_and_task(args)
    _check_shape(circuit, model, args.circuit)
    evaluate = _engine("evaluate")
    evaluation = evaluate(model, task, circuit, ablation=ablation, curve=not args.no_curve)
    result = {
        "circuit": args.circuit,
        "edges": circuit.n_edges,
        "total_edges": circuit.graph.n_edges,
        **evaluation.to_dict(),
    }
    if args.json:
        from circuitfind.strict_json import dumps

        print(dumps(result))
        return 0
    print(f"circuit: {circuit.n_edges} of {circuit.graph.n_edges} edges")
    print(f"faithfulness: {evaluation.faithfulness:.3f}")
    print(
        f"metric: full {evaluation.metric_full:.4g}, circuit {evaluation.metric_circuit:.4g}, "
        f"empty {evaluation.metric_empty:.4g}"
    )
    for key in ("cpr", "cmd"):
        value = getattr(evaluation, key, None)
        if value is not None:
            print(f"{key.upper()}: {value:.3f}")
    return 0


# ---------------------------------------------------------------------------- render
def _render(args: argparse.Namespace) -> int:
    from circuitfind.circuit import Circuit
    from circuitfind.render import render
    from circuitfind.report import write_report

    circuit = Circuit.from_json(args.circuit)
    out = Path(args.output or Path(args.circuit).with_suffix(".svg"))
    roles = _roles_from_meta(circuit)
    model = task = None
    if args.model or args.task:
        if not (args.model and args.task):
            raise InputError("give both --model and --task to detect head roles")
        model, task = _load_model_and_task(args)
        _check_shape(circuit, model, args.circuit)
        roles = None  # detected afresh
    if out.suffix.lower() in (".html", ".htm"):
        if roles is None and model is not None:
            from circuitfind.roles import detect_roles

            heads = [n for n in circuit.nodes if n.startswith("a")]
            roles = detect_roles(model, task, heads=heads)
        path = write_report(
            circuit, out, task=task, roles=roles, command=circuit.meta.get("command")
        )
    else:
        path = render(circuit, out, model=model, task=task, roles=roles)
    print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------------- the parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="circuitfind",
        description="Find, evaluate and draw circuits in transformer language models.",
        epilog=(
            "quickstart:\n"
            "  circuitfind discover --model zoo:NAME --task induction --out out/\n"
            "  circuitfind render out/circuit.json -o out/circuit.png\n"
            "  circuitfind evaluate out/circuit.json --model zoo:NAME --task induction"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    doctor = sub.add_parser("doctor", help="check that the install works")
    doctor.add_argument("--json", action="store_true", help="print JSON")
    doctor.set_defaults(func=_doctor)

    d = sub.add_parser(
        "discover",
        help="find a circuit for a task; write circuit.json, circuit.svg and report.html",
        formatter_class=_Help,
        description=(
            "Score every edge of the model's graph on the task, keep the important ones, and "
            "write DIR/circuit.json, DIR/circuit.svg (+ .gv) and DIR/report.html.\n\n"
            "Methods: eap-ig-inputs (default; EAP with integrated gradients on the inputs), "
            "eap-ig-activations, eap (attribution patching, fastest), exact (activation "
            "patching of every edge), acdc (iterative pruning), node (ablate nodes).\n"
            "Ablations: resample (corrupted prompts), mean, mean-positional, zero.\n"
            "Pruning: --top-n N edges, --threshold T on |score|, or the smallest circuit "
            "reaching --target-faithfulness F (at most one)."
        ),
    )
    _add_model_args(d)
    d.add_argument(
        "--method",
        default="eap-ig-inputs",
        help="one of: "
        + "; ".join(f"{spec.name} ({spec.summary})" for spec in _ENGINE_METHODS.values()),
    )
    d.add_argument("--ablation", default="resample", help=f"one of {', '.join(ABLATIONS)}")
    prune = d.add_mutually_exclusive_group()
    prune.add_argument("--top-n", type=int, metavar="N", help="keep the N best edges")
    prune.add_argument("--threshold", type=float, metavar="T", help="keep edges with |score|>=T")
    prune.add_argument(
        "--target-faithfulness", type=float, metavar="F", help="smallest circuit reaching F"
    )
    d.add_argument("--batch-size", type=int, metavar="B", help="prompts per forward pass")
    _add_method_options(d)
    d.add_argument(
        "--greedy", action="store_true", help="with --top-n: grow from the logits (EAP-IG greedy)"
    )
    d.add_argument("--out", metavar="DIR", help="output directory (default: circuits/...)")
    d.add_argument("--json", action="store_true", help="print the summary as JSON")
    d.set_defaults(func=_discover)

    e = sub.add_parser(
        "evaluate",
        help="faithfulness of a saved circuit on a task",
        formatter_class=_Help,
        description="Run the model with only the circuit's edges and report its faithfulness.",
    )
    e.add_argument("circuit", metavar="CIRCUIT.json")
    _add_model_args(e)
    e.add_argument("--ablation", default=None, help="override the circuit's ablation")
    e.add_argument("--no-curve", action="store_true", help="skip the faithfulness curve")
    e.add_argument("--json", action="store_true", help="print JSON")
    e.set_defaults(func=_evaluate)

    r = sub.add_parser(
        "render",
        help="draw a saved circuit (svg, png, pdf, gv) or write its HTML report",
        formatter_class=_Help,
        description=(
            "Draw CIRCUIT.json with graphviz. The output format follows the suffix of -o: "
            ".svg, .png, .pdf, .gv (DOT only, needs no graphviz) or .html (the report). Head "
            "roles come from the file (saved by discover) or, with --model and --task, are "
            "detected afresh."
        ),
    )
    r.add_argument("circuit", metavar="CIRCUIT.json")
    r.add_argument("-o", "--output", metavar="FILE", help="default: CIRCUIT.svg")
    r.add_argument("--model", metavar="SRC", help="detect head roles with this model")
    r.add_argument("--task", help="... on this task's prompts")
    r.add_argument("--n", type=int, default=32, metavar="PROMPTS", help=argparse.SUPPRESS)
    r.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    r.add_argument("--device", default=None, help=argparse.SUPPRESS)
    r.add_argument("--dtype", default=None, help=argparse.SUPPRESS)
    r.set_defaults(func=_render)

    for name in PLUGINS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
                raise  # the module exists but something it imports is missing
            continue
        module.register(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
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
        with terminate_as_interrupt():  # SIGTERM ends like Ctrl-C: a message, exit code 130
            return int(args.func(args) or 0)
    except CircuitfindError as exc:
        if args.debug:
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
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
        print(
            f"internal error: {type(exc).__name__}: {_one_line(exc)} "
            "(rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
