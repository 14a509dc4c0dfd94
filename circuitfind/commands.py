"""The ``discover``, ``evaluate``, ``render`` and ``doctor`` commands and the helpers they
share (model and task loading, roles, metrics, timing). The parser lives in
:mod:`circuitfind.cli`."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from circuitfind.cli_base import (
    METRICS,
    RENDER_FORMATS,
    STARTED,
    TASKS,
    _non_negative,
    _positive_int,
    _whole_number,
    available_cpus,
)
from circuitfind.errors import InputError
from circuitfind.methods.table import METHODS as _ENGINE_METHODS

logger = logging.getLogger(__name__)


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
        head: Role(
            head,
            entry.get("role", "unlabelled"),
            float(entry.get("score", 0.0)),
            by_pattern_only=bool(entry.get("by_pattern_only", False)),
            note=str(entry.get("note", "")),
        )
        for head, entry in saved.items()
        if isinstance(entry, dict)
    }


def _roles_to_meta(roles: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for head, role in roles.items():
        entry: dict[str, Any] = {"role": role.name, "score": round(role.score, 4)}
        if role.note:
            entry["by_pattern_only"] = role.by_pattern_only
            entry["note"] = role.note
        out[head] = entry
    return out


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
        if len({repr(d) for _, d in rows}) == 1:
            names = ", ".join(spec.name for spec, _ in rows)
            where = f"{names}; default {default}"
        else:  # the methods that share the flag differ in its default: name each
            where = "default " + ", ".join(f"{d} ({spec.name})" for spec, d in rows)
        kind: Any = str
        if isinstance(default, bool):
            kind = str
        elif isinstance(default, int):
            kind = _whole_number if default == 0 else _positive_int
        elif isinstance(default, float):
            kind = _non_negative
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=kind,
            metavar=name.split("_")[-1].upper(),
            help=f"{text} ({where})",
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
    from circuitfind.report import head_totals, write_report
    from circuitfind.roles import detect_roles
    from circuitfind.stability_summary import stability_lines, stability_summary
    from circuitfind.strict_json import dumps

    phases: dict[str, float] = {"startup_s": start - STARTED[0]}  # Python, torch, transformers
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
            train_steps=getattr(args, "train_steps", None) or 200,
        ),
        yes=args.yes,
    )
    certify = getattr(args, "certify", False)
    discover = _engine("certify" if certify else "discover")
    checkpoint = out / "checkpoint"  # exact and acdc say what they kept when interrupted
    options: dict[str, Any] = {"seed": args.seed}
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    if getattr(args, "max_memory", None) is not None:
        options["max_memory"] = args.max_memory
    if getattr(args, "positions", None):
        options["positions"] = args.positions  # "all" or "S1,IO,S2,END" (layout_for reads it)
    spec = _ENGINE_METHODS[method]
    for name in spec.options:  # the method's own options, from its table row
        options[name] = getattr(args, name, None)
    options["bootstrap"] = getattr(args, "bootstrap", 0)
    if getattr(args, "ensemble", None):
        options["ensemble"] = args.ensemble
    if certify:
        options["mask"] = args.mask_method
        options["frontier"] = args.frontier
        options["candidates"] = args.candidates
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
    roles = detect_roles(model, task, heads=heads, circuit=circuit) if heads else {}
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
    phases["total_s"] = time.perf_counter() - STARTED[0]  # so far: the report shows this
    circuit.meta["cli_timing"] = {k: round(v, 3) for k, v in phases.items()}
    t = time.perf_counter()
    from circuitfind.explorer.page import write_explorer

    files["explorer"] = str(
        write_explorer(circuit, out / "explorer.html", roles=roles, model=model, task=task)
    )
    phases["explorer_s"] = time.perf_counter() - t
    t = time.perf_counter()
    files["report"] = str(
        write_report(
            circuit.collapsed(),  # the report reads position-free edges (identity without)
            out / "report.html",
            evaluation=evaluation,
            task=task,
            command=args.command_line,
            roles=roles,
            tokenizer=getattr(model, "tokenizer", None),
            explorer="explorer.html",
        )
    )
    phases["report_s"] = time.perf_counter() - t
    phases["total_s"] = time.perf_counter() - STARTED[0]
    circuit.meta["cli_timing"] = {k: round(v, 3) for k, v in phases.items()}
    files["circuit"] = str(circuit.to_json(out / "circuit.json"))
    if getattr(args, "mib", False):  # MIB's {task}_{model} folder of importance scores
        files["mib"] = str(circuit.to_mib(out / "mib", task=task.name, model=args.model))

    faith = evaluation.get("faithfulness")
    ranked = sorted(head_totals(circuit).items(), key=lambda kv: -abs(kv[1]))[:5]
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
        "n_edges_total": circuit.n_edges_total,
        "nodes": circuit.nodes,
        "faithfulness": faith,
        "metric": metric,
        "metrics": circuit.meta.get("metrics"),
        "top_heads": top,
        "unknown_tokens": getattr(args, "unknown_tokens", 0),
        **stability_summary(circuit.meta),
        "timing": {k: round(v, 3) for k, v in phases.items()},
        "files": files,
    }
    if args.json:
        print(dumps(summary))
        return 0
    share = 100 * circuit.n_edges / max(1, circuit.n_edges_total)
    print(
        f"circuit: {circuit.n_edges} of {circuit.n_edges_total} edges ({share:.1f}%), "
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
    for line in stability_lines(summary):
        print(line)
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
        "n_edges_total": circuit.n_edges_total,
        "metric": metric,
        "unknown_tokens": getattr(args, "unknown_tokens", 0),
        **{k: v for k, v in evaluation.to_dict().items() if k not in ("n_edges", "n_edges_total")},
    }
    if args.json:
        from circuitfind.strict_json import dumps

        print(dumps(result))
        return 0
    print(f"circuit: {circuit.n_edges} of {circuit.n_edges_total} edges")
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
            roles = detect_roles(model, task, heads=heads, circuit=circuit)
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


# ---------------------------------------------------------------------------- plan
def _plan(args: argparse.Namespace) -> int:
    """``circuitfind plan``: the memory plan of a run, printed without running it."""
    from circuitfind.methods.table import method_name, method_options
    from circuitfind.patching import ablation_kind
    from circuitfind.plan import make_plan

    method = method_name(args.method)
    ablation = ablation_kind(args.ablation)
    model, task = _load_model_and_task(args)
    spec = _ENGINE_METHODS[method]
    given = {name: getattr(args, name, None) for name in spec.options}
    columns = 0
    if getattr(args, "positions", None):
        from circuitfind.methods.positional import positional_function
        from circuitfind.positions import layout_for

        positional_function(method, None)  # a method without a positional form: refused
        layout = layout_for(task, args.positions)
        columns = 0 if layout is None else layout.n_columns
    plan = make_plan(
        model,
        task,
        method,
        ablation=ablation,
        batch_size=args.batch_size or "auto",
        max_memory=args.max_memory,
        options=method_options(spec, given),
        columns=columns,
    )
    if args.json:
        from circuitfind.strict_json import dumps

        print(dumps(plan.to_dict()))
    else:
        print(plan.table())
        if not plan.fits:
            print("does not fit: lower --batch-size, or omit it to let the plan choose")
    return 0 if plan.fits else 1
