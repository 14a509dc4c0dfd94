"""``circuitfind serve DIR``: the explorer with live re-evaluation (registered as a CLI
plugin; nothing heavy is imported until the command runs)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    """Add the ``serve`` subcommand to the ``circuitfind`` parser's subparsers."""
    p = sub.add_parser(
        "serve",
        help="open a circuit in the explorer on localhost, with live ablate / restore",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Serve DIR/explorer.html's page at http://127.0.0.1:PORT/ with its ablate and "
            "restore buttons on: removing a node or an edge re-measures the circuit's "
            "faithfulness with the engine (POST /api/evaluate). The model, task, prompt count "
            "and seed default to those the circuit was discovered with.\n\n"
            "  circuitfind discover --model zoo:ioi --task ioi --out out/\n"
            "  circuitfind serve out/"
        ),
    )
    p.add_argument("dir", metavar="DIR", help="a discover output directory, or a circuit.json")
    p.add_argument("--model", metavar="SRC", help="the model (default: the circuit's)")
    p.add_argument("--task", help="the task (default: the circuit's)")
    p.add_argument("--n", type=int, metavar="PROMPTS", help="prompts (default: the circuit's)")
    p.add_argument("--seed", type=int, help="prompt seed (default: the circuit's)")
    p.add_argument("--port", type=int, default=8765, help="port (0: any free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--device", help="cpu, cuda, mps (when not given: cpu)")
    p.add_argument("--dtype", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the circuit, its model and task; serve until interrupted."""
    from circuitfind.circuit import Circuit
    from circuitfind.commands import _check_shape, _load_model_and_task
    from circuitfind.errors import InputError
    from circuitfind.explorer.data import frequencies_from_file
    from circuitfind.explorer.serve import ExplorerSession, make_server
    from circuitfind.roles import detect_roles

    path = Path(args.dir)
    if path.is_dir():
        path = path / "circuit.json"
    circuit = Circuit.from_json(path)
    meta = circuit.meta
    args.model = args.model or meta.get("model")
    args.task = args.task or meta.get("task")
    if not args.model or not args.task:
        raise InputError(f"{path} does not record its model and task: give --model and --task")
    if args.n is None:
        args.n = int(meta.get("n_prompts") or 64)
    if args.seed is None:
        args.seed = int(meta.get("task_seed") or 0)
    model, task = _load_model_and_task(args)
    _check_shape(circuit, model, str(path))
    metric = meta.get("metric_name")
    if metric and getattr(task.metric, "name", metric) != metric:
        task = task.with_metric(metric)
    heads = [n for n in circuit.nodes if n.startswith("a")]
    roles = detect_roles(model, task, heads=heads) if heads else {}
    session = ExplorerSession(
        circuit, model, task, roles=roles, frequencies=frequencies_from_file(path)
    )
    server = make_server(session, args.host, args.port)
    host, port = str(server.server_address[0]), int(server.server_address[1])
    print(f"serving {path} at http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
