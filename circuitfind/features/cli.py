"""``circuitfind features train | graph | circuit``: transcoders and feature circuits."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]

_EXAMPLES = (
    "  circuitfind features train --model zoo:induction-2l --out tc/ --steps 1000\n"
    "  circuitfind features graph --model zoo:induction-2l --transcoders tc/ \\\n"
    "      --tokens 5,9,3,7,1,5,9,3 --out out/graph.json --neuronpedia out/np.json\n"
    "      (also writes out/feature_explorer.html, the interactive graph)\n"
    "  circuitfind features circuit --model zoo:induction-2l --transcoders tc/ --task induction"
)


def register(sub: Any) -> None:
    """Add ``features`` and its subcommands to the ``circuitfind`` parser."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "features",
        help="transcoders, attribution graphs and feature circuits",
        description="Train per-layer transcoders, build a prompt's attribution graph over "
        "their features (exact: contributions sum to the target logit), check it by "
        "intervention, export it to Neuronpedia's JSON, draw it as one offline interactive page "
        "(feature_explorer.html), or find a task's feature circuit.\n\n" + _EXAMPLES,
        formatter_class=fmt,
    )
    fs = p.add_subparsers(dest="features_command", metavar="ACTION")
    fs.required = True

    t = fs.add_parser("train", help="train transcoders and save them", formatter_class=fmt)
    _model(t)
    t.add_argument("--out", required=True, help="directory to write the transcoders to")
    t.add_argument("--sites", default="auto", help="auto, mlp, attn, or a comma list such as m0,m1")
    t.add_argument("--activation", default="topk", choices=("relu", "topk", "jumprelu"))
    t.add_argument("--d-sae", type=int, default=None, help="features per site (4 x d_model)")
    t.add_argument("--k", type=int, default=8, help="TopK's k")
    t.add_argument("--skip", action="store_true", help="add a linear skip connection W_skip")
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--lr", type=float, default=1e-2)
    t.add_argument("--n", type=int, default=256, help="training sequences (zoo generators)")
    t.add_argument("--task", default=None, help="train on a task's clean prompts instead")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_train)

    g = fs.add_parser("graph", help="a prompt's attribution graph", formatter_class=fmt)
    _model(g)
    g.add_argument("--transcoders", required=True, help="directory written by `features train`")
    g.add_argument("--prompt", default=None, help="prompt text")
    g.add_argument("--tokens", default=None, help="token ids instead: '5,8,13'")
    g.add_argument("--target", default=None, help="target token (text or id; default: top)")
    g.add_argument("--wrong", default=None, help="attribute logit(target) - logit(wrong)")
    g.add_argument("--node-threshold", type=float, default=0.8)
    g.add_argument("--edge-threshold", type=float, default=0.98)
    g.add_argument(
        "--check",
        type=int,
        default=10,
        metavar="N",
        help="intervention check on the N most influential features (0: skip)",
    )
    g.add_argument(
        "--examples",
        type=int,
        default=None,
        metavar="K",
        help="each feature's K top-activating examples from the transcoders' training data, in "
        "the JSON and the explorer (default: 5 where that data is known: a zoo model's "
        "generator, or --task; otherwise 0)",
    )
    g.add_argument(
        "--task",
        default=None,
        help="the examples' data: this task's clean prompts (as `features train --task`)",
    )
    g.add_argument("--n", type=int, default=256, help="the examples' sequences (as train's --n)")
    g.add_argument("--seed", type=int, default=0, help="the examples' seed (as train's --seed)")
    g.add_argument("--out", default=None, help="write the graph as JSON here")
    g.add_argument("--neuronpedia", default=None, help="write Neuronpedia's graph JSON here")
    g.add_argument(
        "--explorer",
        default=None,
        metavar="HTML",
        help="write the interactive graph (one offline HTML file) here (default: "
        "feature_explorer.html beside --out, else beside --neuronpedia)",
    )
    g.add_argument("--no-explorer", action="store_true", help="write no explorer page")
    g.set_defaults(func=_graph)

    c = fs.add_parser("circuit", help="a task's feature circuit (Marks et al.)")
    _model(c)
    c.add_argument("--transcoders", required=True)
    c.add_argument("--task", required=True)
    c.add_argument("--n", type=int, default=64)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--top-n", type=int, default=20)
    c.add_argument("--ablation", default="corrupted", choices=("corrupted", "zero", "mean"))
    c.add_argument(
        "--edge-threshold",
        type=float,
        default=0.0,
        help="keep the edges between kept nodes with |IE| above this (default: every non-zero)",
    )
    c.add_argument(
        "--no-edges", action="store_true", help="nodes only (skips one backward per kept node)"
    )
    c.add_argument("--out", default=None, help="write the circuit (nodes, edges) as JSON here")
    c.add_argument(
        "--draw",
        default=None,
        metavar="PATH",
        help="draw the circuit (.svg, .png, .pdf, or .gv for DOT only; the strongest 80 edges)",
    )
    c.set_defaults(func=_circuit)


def _model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="hub name, local directory or zoo:NAME")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def _load(args: argparse.Namespace) -> Any:
    from circuitfind.loading import load

    return load(args.model)


def _train(args: argparse.Namespace) -> int:
    from circuitfind.features.training import train_transcoders
    from circuitfind.inspect.sae import evaluation_data

    model = _load(args)
    data = evaluation_data(model, task=args.task, n=args.n, seed=args.seed) if args.task else None
    sites = args.sites if args.sites in ("auto", "mlp", "attn") else args.sites.split(",")
    tcs = train_transcoders(
        model,
        data,
        sites=sites,
        d_sae=args.d_sae,
        activation=args.activation,
        k=args.k,
        skip=args.skip,
        steps=args.steps,
        lr=args.lr,
        n=args.n,
        seed=args.seed,
        progress=not args.json,
    )
    tcs.save(args.out)
    report = {s: tc.cfg.metrics for s, tc in tcs.items()}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    first = next(iter(report.values()))["replacement"]
    print(f"transcoders for {', '.join(report)} written to {args.out}")
    for s, m in report.items():
        print(
            f"  {s}: explained variance {m['explained_variance']:.3f}, L0 {m['l0']:.1f}, "
            f"dead {m['dead_fraction']:.1%}, dense {m['dense_fraction']:.1%}"
        )
    print(
        f"replacement model: KL {first['kl']:.4f}, next-token loss {first['loss_replacement']:.4f}"
        f" vs {first['loss_original']:.4f} original"
    )
    return 0


def _graph(args: argparse.Namespace) -> int:
    import torch

    from circuitfind.errors import InputError
    from circuitfind.features.export import write_neuronpedia
    from circuitfind.features.graph import attribution_graph
    from circuitfind.features.intervene import intervention_check
    from circuitfind.features.transcoder import TranscoderSet

    model = _load(args)
    if args.tokens:
        prompt: Any = torch.tensor([int(t) for t in args.tokens.split(",") if t.strip()])
    elif args.prompt:
        prompt = args.prompt
    else:
        raise InputError("give --prompt TEXT or --tokens IDS")

    def tok(x: str | None) -> int | str | None:
        return int(x) if x is not None and x.isdigit() else x

    tcs = TranscoderSet.load(args.transcoders)
    graph = attribution_graph(
        model,
        tcs,
        prompt,
        target=tok(args.target),
        wrong=tok(args.wrong),
        node_threshold=args.node_threshold,
        edge_threshold=args.edge_threshold,
    )
    out = graph.to_dict()
    if args.check:
        out["intervention"] = intervention_check(model, graph, top=args.check)
    out["attention"] = _explain_attention(model, graph)
    data, k = _examples_data(model, args)
    if k:
        from circuitfind.features.examples import graph_examples

        out["examples"] = graph_examples(model, tcs, graph, data=data, k=k)
    page = _explorer_path(args)
    if page is not None:
        from circuitfind.features.explorer import write_feature_explorer

        extra: dict[str, Any] = (
            {"model": model, "transcoders": tcs, "data": data, "k": k} if k else {}
        )
        write_feature_explorer(graph, page, **extra)
        out["explorer"] = str(page)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    if args.neuronpedia:
        write_neuronpedia(graph, args.neuronpedia)
    if args.json:
        json.dump(out, sys.stdout, indent=1)
        print()
        return 0
    t = graph.target
    print(
        f"target {t['token_str']!r} at position {t['pos']}: {t['value']:.4f}; "
        f"{len(out['nodes'])} nodes, {len(out['edges'])} edges kept; "
        f"completeness error {out['completeness_max_error']:.2e}"
    )
    path = graph.top_path()
    steps = []
    for a, b in itertools.pairwise(path):
        hw = graph.heads_of(a, b)
        via = "" if hw is None else f" via a{graph.nodes[a].layer}.h{int(hw.abs().argmax())}"
        steps.append(f"{graph.nodes[b].id}{via} -> ")
    print("top path: " + "".join(reversed(steps)) + graph.nodes[path[0]].id)
    for why in out.get("attention", []):
        pair = why["pairs"][0]
        print(
            f"  {why['head']} attends {why['query_pos']} -> {why['key_pos']} "
            f"(p = {why['pattern']:.2f}) mostly because of query {pair['query']} x key "
            f"{pair['key']}" + (f" <- {why['key_input']}" if why.get("key_input") else "")
        )
    if args.check:
        iv = out["intervention"]
        for key, label in (
            ("pearson_frozen", "attention frozen"),
            ("pearson_attention_unfrozen", "attention unfrozen"),
            ("pearson_unfrozen", "all unfrozen"),
        ):
            r = iv[key]
            ci = r.get("ci95")
            ci_text = f", 95% CI [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
            value = "n/a" if r["r"] is None else f"{r['r']:.3f}"
            print(f"intervention vs graph ({label}): r = {value}, n = {r['n']}{ci_text}")
    if page is not None:
        what = f"{k} top examples a feature" if k else "no examples: give --task TASK, the data"
        what = what if k or args.examples == 0 else what + " the transcoders were trained on"
        print(f"explorer: {page} ({page.stat().st_size / 1e3:.0f} kB; {what})")
    return 0


def _examples_data(model: Any, args: argparse.Namespace) -> tuple[Any, int]:
    """(the examples' data, K): a task's clean prompts, or a zoo model's generator (both as
    ``features train`` draws them); K defaults to 5 where the data is known."""
    from circuitfind.inspect.sae import evaluation_data

    known = args.task is not None or str(model.cfg.name).startswith("zoo:")
    k = args.examples if args.examples is not None else (5 if known else 0)
    if not k:
        return None, 0
    return evaluation_data(model, task=args.task, n=args.n, seed=args.seed), k


def _explorer_path(args: argparse.Namespace) -> Path | None:
    if args.no_explorer:
        return None
    if args.explorer:
        return Path(args.explorer)
    beside = args.out or args.neuronpedia
    return Path(beside).parent / "feature_explorer.html" if beside else None


def _circuit(args: argparse.Namespace) -> int:
    from circuitfind.features.dataset import feature_circuit
    from circuitfind.features.transcoder import TranscoderSet
    from circuitfind.tasks import get_task

    if args.draw and args.no_edges:
        from circuitfind.errors import InputError

        raise InputError("--draw needs the circuit's edges: drop --no-edges")
    model = _load(args)
    task = get_task(args.task, model, n=args.n, seed=args.seed)
    fc = feature_circuit(
        model,
        TranscoderSet.load(args.transcoders),
        task,
        top_n=args.top_n,
        ablation=args.ablation,
        edges=not args.no_edges,
        edge_threshold=args.edge_threshold,
    )
    out = fc.to_dict()
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    if args.draw:
        from circuitfind.features.draw import draw_feature_circuit

        drawn = draw_feature_circuit(fc, args.draw)
        if not args.json:
            print(f"drew {drawn}")
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{fc.n_nodes} nodes; faithfulness {fc.faithfulness} over {len(task)} prompts")
    for name, ie in fc.top(10):
        print(f"  {name}: IE {ie:+.4f}")
    if fc.edges is not None:
        print(f"{len(fc.edges)} edges; the strongest:")
        for u, v, w in fc.top_edges(10):
            print(f"  {u} -> {v}: IE {w:+.4f}")
    return 0


def _explain_attention(model: Any, graph: Any) -> list[dict[str, Any]]:
    """QK splits for the attention-mediated edges of the top path (where the model allows)."""
    import itertools

    from circuitfind.errors import UnsupportedModelError
    from circuitfind.features.qk import attention_drivers

    found = []
    for a, b in itertools.pairwise(graph.top_path()):
        hw = graph.heads_of(a, b)
        if hw is None:
            continue
        tgt, src = graph.nodes[a], graph.nodes[b]
        head = int(hw.abs().argmax())
        try:
            why = attention_drivers(model, graph, tgt.layer, head, tgt.pos, src.pos, top=5)
        except UnsupportedModelError:
            continue
        key = graph.index(why["key_side"][0]["node"])
        if graph.adjacency[key].abs().max() > 0:
            k_src = int(graph.adjacency[key].abs().argmax())
            k_hw = graph.heads_of(key, k_src)
            via = (
                ""
                if k_hw is None
                else f" via a{graph.nodes[key].layer}.h{int(k_hw.abs().argmax())}"
            )
            why["key_input"] = graph.nodes[k_src].id + via
        found.append(why)
    return found
