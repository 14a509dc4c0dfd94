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
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from circuitfind.errors import CircuitfindError, InputError
from circuitfind.methods.table import METHODS as _ENGINE_METHODS

__all__ = ["ABLATIONS", "METRICS", "TASKS", "available_cpus", "build_parser", "main"]

logger = logging.getLogger(__name__)
_STARTED = time.perf_counter()  # the command's clock: reset when main() starts


# ------------------------------------------------------------------ the names shown in --help
# argparse needs these before anything heavy is imported, so they are torch-free: the methods
# come from the method table itself (circuitfind.methods.table, which imports no torch), the
# ablations, tasks and metrics from the small tables below, which tests/test_cli_fast.py checks
# against the engine's own (circuitfind.patching's ABLATIONS, circuitfind.tasks' TASKS and
# METRICS).
def _methods() -> dict[str, str]:
    """Every method of the table (those registered at run time too) and its summary."""
    return {name: spec.summary for name, spec in _ENGINE_METHODS.items()}


ABLATIONS: dict[str, str] = {
    "resample": "the corrupted prompt's value",
    "mean": "the mean over the task's prompts",
    "mean-positional": "the mean per position",
    "zero": "zero",
}
TASKS: dict[str, str] = {
    "ioi": "indirect object identification (metric: logit_diff)",
    "induction": "random tokens then their repeat (metric: logprob)",
    "greater-than": "'from the year 17YY to the year 17' -> years above YY (metric: prob_diff)",
    "docstring": "Python docstring ':param' -> the next argument (metric: logit_diff)",
    "gendered-pronoun": "'So Mary is a great friend, isn't' -> ' she' (metric: logit_diff)",
    "agreement": "subject-verb agreement across phrases (metric: logit_diff)",
    "mcqa": "a multiple-choice question -> the answer's letter (metric: logit_diff)",
    "arithmetic": "'23+45=' -> '68' (metric: logit_diff)",
    "factual": "'Paris is the capital of' -> ' France' (metric: logit_diff)",
    "sentiment": "a movie review -> ' great' / ' terrible' (metric: logit_diff)",
}
METRICS: dict[str, str] = {
    "logit_diff": "logit(answer) - logit(wrong), higher is better",
    "logprob": "log p(answer), higher is better",
    "prob_diff": "p(answer set) - p(wrong set), higher is better",
    "kl": "KL(clean || run) at the readout, lower is better",
    "accuracy": "fraction of prompts where the answer beats the wrong answer",
}
RENDER_FORMATS = ("svg", "png", "pdf", "gv", "dot")  # circuitfind.render.FORMATS
PLUGINS = ("circuitfind.zoo.cli", "circuitfind.inspect.cli", "circuitfind.bench.cli")
# options every subcommand accepts before or after its name
GLOBAL_FLAGS = ("--debug", "-v", "--verbose", "-q", "--quiet", "--threads")
# keyword arguments of the Python API that error messages name, as the CLI spells them
_API_HINTS = {
    "first_token=True": "--first-token",
    "trust_remote_code=True": "--trust-remote-code",
    "tokenizer=": "--tokenizer",
}


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class _Help(argparse.RawDescriptionHelpFormatter):
    """Descriptions wrapped by paragraph (indented lines kept as written); each option's
    default shown once, and only when it says something (a ``None`` default is described in
    the option's own words)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        paragraphs = []
        for para in text.split("\n\n"):
            if any(line.startswith(" ") for line in para.splitlines()):
                paragraphs.append(textwrap.indent(para, indent))
            else:
                paragraphs.append(
                    textwrap.fill(
                        " ".join(para.split()),
                        width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                    )
                )
        return "\n\n".join(paragraphs)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or "default" in text
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


# ---------------------------------------------------------------------------- argument types
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} must be a fraction in (0, 1], e.g. 0.9")
    return value


# ---------------------------------------------------------------------------- threads
def available_cpus() -> int:
    """The CPU cores this process may run on: its affinity mask (``os.sched_getaffinity``),
    capped by a cgroup CPU quota where one is set (containers)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        n = os.cpu_count() or 1
    quota = _cgroup_cpus()
    if quota is not None:
        n = min(n, quota)
    return max(1, n)


def _cgroup_cpus() -> int | None:
    """``ceil(quota / period)`` from cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_*``; None if unset."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, -(-int(quota) // int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        p = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return max(1, -(-q // p)) if q > 0 and p > 0 else None
    except (OSError, ValueError):
        return None


def thread_count(requested: int | None) -> int:
    """``--threads`` if given, else ``OMP_NUM_THREADS`` if set, else :func:`available_cpus`."""
    if requested:
        return requested
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return available_cpus()


def _set_threads(args: argparse.Namespace) -> None:
    import torch

    n = thread_count(getattr(args, "threads", None))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    logger.info("torch threads: %d", n)


# ---------------------------------------------------------------------------- helpers
def _engine(name: str) -> Any:
    """``circuitfind.discover`` / ``circuitfind.evaluate``, looked up at call time (so the CLI
    wiring tests can substitute them)."""
    import circuitfind

    fn = getattr(circuitfind, name, None)
    if fn is None:
        raise RuntimeError(f"this build of circuitfind has no {name}()")
    return fn


def _lazy(module: str, function: str) -> Any:
    """A subcommand handler imported only when the subcommand runs."""

    def run(args: argparse.Namespace) -> Any:
        return getattr(importlib.import_module(module), function)(args)

    run.__name__ = function
    return run


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars (to stderr) unless ``-q`` or stderr is not a terminal."""
    return not args.quiet and sys.stderr.isatty()


def quiet_third_party(verbose: bool) -> None:
    """Silence transformers' and huggingface_hub's loading bars and chatter unless verbose."""
    if verbose:
        return
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars
        from huggingface_hub.utils import logging as hub_logging

        disable_progress_bars()
        hub_logging.set_verbosity_error()  # its retry chatter: the one-line error says it all
    except ImportError:  # pragma: no cover
        pass


def _load_model_and_task(args: argparse.Namespace) -> tuple[Any, Any]:
    from circuitfind.loading import load
    from circuitfind.tasks import get_task

    quiet_third_party(args.verbose or args.debug)
    model = load(
        args.model,
        device=args.device,
        dtype=args.dtype,
        tokenizer=getattr(args, "tokenizer", None),
        trust_remote_code=getattr(args, "trust_remote_code", False),
    )
    kwargs: dict[str, Any] = {}
    if getattr(args, "metric", None):
        kwargs["metric"] = args.metric
    if getattr(args, "first_token", False):
        if not str(args.task).endswith(".jsonl") and not Path(args.task).is_file():
            raise InputError(
                "--first-token applies to a JSONL prompt file (--task FILE.jsonl); the built-in "
                "tasks' answers are single tokens already"
            )
        kwargs["first_token"] = True
    if getattr(args, "allow_unk", False):
        kwargs["allow_unk"] = True
    task = get_task(args.task, model, n=args.n, seed=args.seed, **kwargs)
    args.unknown_tokens = _count_unknown(model, task, args.task)
    return model, task


def _count_unknown(model: Any, task: Any, where: str) -> int:
    """Warn (one line) and count when a task's prompts hold the tokenizer's unknown token."""
    unk = getattr(getattr(model, "tokenizer", None), "unk_token_id", None)
    clean = getattr(task, "clean", None)
    if unk is None or clean is None:
        return 0
    mask = getattr(task, "attention_mask", None)
    hits = clean == unk
    if mask is not None:
        hits = hits & mask.bool()
    n = int(hits.sum())
    if n:
        print(
            f"warning: {n} prompt tokens of {where} are unknown to the tokenizer (became "
            f"{model.tokenizer.unk_token!r}) in {int(hits.any(-1).sum())} of {len(clean)} "
            "prompts; use words of the model's vocabulary",
            file=sys.stderr,
        )
    return n


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


_BETTER = {True: "higher is better", False: "lower is better"}


def _metric_of(task: Any, circuit: Any = None) -> dict[str, Any]:
    """``{"name", "higher_is_better"}`` of the metric a task (or a circuit's meta) measures."""
    metric = getattr(task, "metric", None)
    name = getattr(metric, "name", None) or (circuit.meta.get("metric_name") if circuit else None)
    higher = getattr(metric, "higher_is_better", None)
    if higher is None and name is not None:
        higher = name != "kl"
    return {"name": name, "higher_is_better": higher}


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", required=True, metavar="SRC", help="hub name (owner/name), directory, zoo:NAME"
    )
    p.add_argument(
        "--task",
        required=True,
        help="a built-in task (" + ", ".join(TASKS) + ") or a .jsonl prompt file",
    )
    p.add_argument(
        "--n", type=_positive_int, default=64, metavar="PROMPTS", help="number of prompt pairs"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt generator")
    p.add_argument(
        "--allow-unk",
        action="store_true",
        help="accept prompt words and answers the tokenizer turns into its unknown token "
        "(counted); without it they are an error naming the word",
    )
    p.add_argument(
        "--metric",
        choices=tuple(METRICS),
        metavar="NAME",
        help="the task's metric instead of its own: " + ", ".join(METRICS),
    )
    p.add_argument(
        "--first-token",
        action="store_true",
        help="JSONL answers of several tokens: score their first token",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (when not given: cpu)")
    p.add_argument("--dtype", help="float32, bfloat16 or float16 (when not given: the model's)")
    p.add_argument("--tokenizer", metavar="SRC", help="tokenizer directory or hub name, for a "
                   "model saved without one")  # fmt: skip
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow a model whose config needs its own Python code (runs that code)",
    )


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
        "threads": f"{torch.get_num_threads()} (of {available_cpus()} available cores)",
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
    """A command-line flag for every option of every method in the table (``steps`` becomes
    the flag spelled with two dashes), with the methods that take it and their default."""
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
            type=_positive_int
            if isinstance(default, int)
            else _non_negative
            if isinstance(default, float)
            else str,
            metavar=name.split("_")[-1].upper(),
            help=f"{text} ({names}; default {default})",
        )


def timing(meta: dict[str, Any]) -> dict[str, float]:
    """Seconds per phase from a circuit's meta: ``meta["timing"]`` where the engine records it,
    else what the older keys allow (scoring, then pruning and measuring the circuit)."""
    if isinstance(meta.get("timing"), dict):
        return {k: float(v) for k, v in meta["timing"].items() if isinstance(v, (int, float))}
    out: dict[str, float] = {}
    scoring, total = meta.get("scoring_time_s"), meta.get("time_s")
    if isinstance(scoring, (int, float)):
        out["scoring_s"] = float(scoring)
        if isinstance(total, (int, float)):
            out["pruning_s"] = max(0.0, float(total) - float(scoring))
    elif isinstance(total, (int, float)):
        out["discover_s"] = float(total)
    return out


def _phase_line(phases: dict[str, float]) -> str:
    total = sum(v for k, v in phases.items() if k != "total_s")
    parts = ", ".join(
        f"{k.removesuffix('_s')} {v:.1f}" for k, v in phases.items() if k != "total_s"
    )
    return f"time: {phases.get('total_s', total):.1f} s ({parts})"


def _discover(args: argparse.Namespace) -> int:
    from circuitfind.methods.table import method_name
    from circuitfind.patching import ablation_kind

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

    phases: dict[str, float] = {"startup_s": start - _STARTED}  # Python, torch, transformers
    model, task = _load_model_and_task(args)
    phases["load_s"] = time.perf_counter() - start
    from circuitfind.checks import confirm_cost, estimate_cost

    confirm_cost(
        estimate_cost(
            model,
            task,
            method,
            batch_size=args.batch_size or 32,
            steps=args.steps or 5,
            prune_search=args.top_n is None and args.threshold is None,
        ),
        yes=args.yes,
    )
    discover = _engine("discover")
    checkpoint = out / "checkpoint"  # exact and acdc say what they kept when interrupted
    options: dict[str, Any] = {"seed": args.seed}
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    spec = _ENGINE_METHODS[method]
    for name in spec.options:  # the method's own options, from its table row
        options[name] = getattr(args, name, None)
    t = time.perf_counter()
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
    engine_phases = timing(circuit.meta)
    phases.update(engine_phases or {"discover_s": time.perf_counter() - t})
    circuit.meta.setdefault("model", args.model)
    circuit.meta["command"] = args.command_line
    files = {"circuit": str(circuit.to_json(out / "circuit.json"))}
    args.partial = f"the circuit is saved in {files['circuit']}"

    t = time.perf_counter()
    heads = [n for n in circuit.nodes if n.startswith("a")]
    roles = detect_roles(model, task, heads=heads) if heads else {}
    circuit.meta["roles"] = _roles_to_meta(roles)
    phases["roles_s"] = time.perf_counter() - t

    t = time.perf_counter()
    evaluation = circuit.meta["evaluation"]  # measured by discover over the same runs

    t = time.perf_counter()
    try:
        files["diagram"] = str(render(circuit, out / "circuit.svg", roles=roles))
    except GraphvizNotFoundError as exc:
        print(f"warning: {exc}", file=sys.stderr)
    files["dot"] = str(out / "circuit.gv")
    phases["render_s"] = time.perf_counter() - t
    phases["total_s"] = time.perf_counter() - _STARTED  # so far: the report shows this
    circuit.meta["cli_timing"] = {k: round(v, 3) for k, v in phases.items()}
    t = time.perf_counter()
    files["report"] = str(
        write_report(
            circuit,
            out / "report.html",
            evaluation=evaluation,
            task=task,
            command=args.command_line,
            roles=roles,
            tokenizer=getattr(model, "tokenizer", None),
        )
    )
    phases["report_s"] = time.perf_counter() - t
    phases["total_s"] = time.perf_counter() - _STARTED
    circuit.meta["cli_timing"] = {k: round(v, 3) for k, v in phases.items()}
    files["circuit"] = str(circuit.to_json(out / "circuit.json"))

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
    metric = _metric_of(task, circuit)
    summary = {
        "model": args.model,
        "task": task.name,
        "method": method,
        "ablation": ablation,
        "n_edges": circuit.n_edges,
        "n_edges_total": circuit.graph.n_edges,
        "nodes": circuit.nodes,
        "faithfulness": faith,
        "metric": metric,
        "metrics": circuit.meta.get("metrics"),
        "top_heads": top,
        "unknown_tokens": getattr(args, "unknown_tokens", 0),
        "timing": {k: round(v, 3) for k, v in phases.items()},
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
    if metric["name"]:
        better = {True: "higher is better", False: "lower is better"}.get(
            metric["higher_is_better"]
        )
        print(f"metric: {metric['name']}" + (f" ({better})" if better else ""))
    if top:
        print(
            "top heads: "
            + ", ".join(
                f"{t['label']} {t['role']}"
                + (f" ({t['role_score']:.2f})" if t["role_score"] else "")
                for t in top
            )
        )
    print(_phase_line(phases))
    print(f"wrote: {', '.join(files.values())}")
    return 0


# ---------------------------------------------------------------------------- evaluate
def _evaluate(args: argparse.Namespace) -> int:
    from circuitfind.circuit import Circuit
    from circuitfind.patching import ablation_kind

    circuit = Circuit.from_json(args.circuit)
    ablation = None if args.ablation is None else ablation_kind(args.ablation)
    model, task = _load_model_and_task(args)
    _check_shape(circuit, model, args.circuit)
    evaluate = _engine("evaluate")
    evaluation = evaluate(model, task, circuit, ablation=ablation, curve=not args.no_curve)
    metric = _metric_of(task, circuit)
    result = {
        "circuit": args.circuit,
        "n_edges": circuit.n_edges,
        "n_edges_total": circuit.graph.n_edges,
        "metric": metric,
        "unknown_tokens": getattr(args, "unknown_tokens", 0),
        **{k: v for k, v in evaluation.to_dict().items() if k not in ("n_edges", "n_edges_total")},
    }
    if args.json:
        from circuitfind.strict_json import dumps

        print(dumps(result))
        return 0
    print(f"circuit: {circuit.n_edges} of {circuit.graph.n_edges} edges")
    print(f"faithfulness: {evaluation.faithfulness:.3f}")
    better = {True: ", higher is better", False: ", lower is better"}.get(
        metric["higher_is_better"]
    )
    print(
        f"metric {metric['name'] or ''}{better or ''}: full {evaluation.metric_full:.4g}, "
        f"circuit {evaluation.metric_circuit:.4g}, empty {evaluation.metric_empty:.4g}"
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

    out = Path(args.output or Path(args.circuit).with_suffix(".svg"))
    if out.suffix.lower().lstrip(".") not in (*RENDER_FORMATS, "html", "htm"):
        raise InputError(
            f"cannot write {out.name!r}: use -o with a file ending in "
            + ", ".join(f".{f}" for f in RENDER_FORMATS)
            + " or .html (the report)"
        )
    circuit = Circuit.from_json(args.circuit)
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
            circuit,
            out,
            task=task,
            roles=roles,
            command=circuit.meta.get("command"),
            tokenizer=getattr(model, "tokenizer", None),
        )
    else:
        path = render(circuit, out, model=model, task=task, roles=roles)
    print(f"wrote {path}")
    return 0


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
        help="find a circuit for a task; write circuit.json, circuit.svg and report.html",
        formatter_class=_Help,
        description=(
            "Score every edge of the model's graph on the task, keep the important ones, and "
            "write DIR/circuit.json, DIR/circuit.svg (+ .gv) and DIR/report.html.\n\n"
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
    d.add_argument(
        "--greedy", action="store_true", help="with --top-n: grow from the logits (EAP-IG greedy)"
    )
    d.add_argument(
        "--out", metavar="DIR", help="output directory (when not given: circuits/MODEL_TASK_METHOD)"
    )
    d.add_argument(
        "--yes",
        action="store_true",
        help="start even when the run is estimated to take over 10 minutes or more memory "
        "than the machine has (without a terminal such a run otherwise stops with an error)",
    )
    d.add_argument("--json", action="store_true", help="print the summary as JSON")
    d.set_defaults(func=_discover)

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
    global _STARTED
    _STARTED = time.perf_counter()
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
