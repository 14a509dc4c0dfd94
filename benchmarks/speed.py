"""Speed of each scoring method against the bare Hugging Face forward/backward, in one run.

    python -m benchmarks.speed [--layers 12 --heads 12 --d-model 768] [--prompts 32 --tokens 16]
        [--exact-receivers 24] [--out reports/speed.md]

GPT-2-small shape with random weights by default (32,491 edges). Exact patching of every edge
takes hours on a CPU, so it is timed on a stratified sample of receivers (every layer's q, k, v,
MLP and the logits) and extrapolated by edge count; the report says so. Ratios are measured in
the same process, back to back.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

import circuitfind as cf
from circuitfind.methods.eap import eap_scores
from circuitfind.methods.exact import _patched_logits
from circuitfind.patching import Ablation, batches
from circuitfind.tasks import Task


def _time(fn, repeat: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--exact-receivers", type=int, default=24)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="reports/speed.md")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    hf_cfg = GPT2Config(n_layer=args.layers, n_head=args.heads, n_embd=args.d_model)
    hf = GPT2LMHeadModel(hf_cfg).eval().to(args.device)
    hf.config._attn_implementation = "eager"
    model = cf.load(hf)
    graph = cf.Graph.from_model(model)
    V = hf_cfg.vocab_size
    n, T = args.prompts, args.tokens
    clean = torch.randint(0, V, (n, T))
    corrupted = torch.randint(0, V, (n, T))
    task = Task.from_tokens(
        clean, corrupted, answer=torch.randint(0, V, (n,)), wrong=torch.randint(0, V, (n,))
    )
    abl = Ablation(model, task, "resample")
    dev_tokens = clean.to(args.device)

    def hf_forward():
        with torch.no_grad():
            hf(dev_tokens)

    def hf_forward_backward():
        hf.zero_grad(set_to_none=True)
        out = hf(dev_tokens).logits[:, -1].float().logsumexp(-1).sum()
        out.backward()

    results: dict = {}
    F = _time(hf_forward, args.repeat)
    FB = _time(hf_forward_backward, args.repeat)
    hf.zero_grad(set_to_none=True)
    B = FB - F
    results["hf_forward_s"] = F
    results["hf_forward_backward_s"] = FB
    ours_F = _time(lambda: model(dev_tokens).sum().item(), args.repeat)
    results["circuitfind_forward_s"] = ours_F

    kw = {"batch_size": n, "progress": False}
    eap_t = _time(lambda: eap_scores(model, graph, task, abl, mode="eap", **kw), args.repeat)
    ig_t = _time(
        lambda: eap_scores(model, graph, task, abl, mode="eap-ig-inputs", steps=5, **kw),
        max(1, args.repeat - 2),
    )
    results["eap_s"] = eap_t
    results["eap_vs_2F_plus_B"] = eap_t / (2 * F + B)
    results["eap_ig_inputs_5_s"] = ig_t
    results["eap_ig_vs_6F_plus_5B"] = ig_t / (6 * F + 5 * B)

    # Exact patching: a stratified sample of receivers, extrapolated by edge count.
    batch = next(batches(task, n, model.device))
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.clean)
        diff = cache.node_outputs() - abl.outputs(batch).expand(-1, *cache.input.shape)
        ctx = model.context(batch.clean)
        rng = torch.Generator().manual_seed(0)
        per_layer = max(1, args.exact_receivers // (args.layers + 1))
        sample = []
        for layer in range(args.layers):
            rs = [r.index for r in graph.receivers if r.layer == layer]
            pick = torch.randperm(len(rs), generator=rng)[:per_layer]
            sample += [rs[int(i)] for i in pick]
        sample.append(graph.receiver_index["logits"])
        chunk = max(1, 16384 // (n * T))
        t_total, edges_done = 0.0, 0
        per_receiver_rate = {}
        for r in sample:
            up = int(graph.n_upstream[r])
            senders = torch.arange(0, min(chunk, up))
            delta = -diff[senders].reshape(len(senders) * n, T, -1)
            t = time.perf_counter()
            logits = _patched_logits(model, graph, cache, ctx, batch.readout, r, delta)
            task.metric_fn(logits.float(), batch.idx.repeat(len(senders)), reduce="none")
            dt = time.perf_counter() - t
            t_total += dt
            edges_done += len(senders)
            per_receiver_rate[r] = dt / len(senders)
        # Extrapolate: each receiver's edges at the rate measured for a sampled receiver of
        # the same layer and kind (attention / MLP / logits).
        est = 0.0
        for rec in graph.receivers:
            same = [
                r
                for r in sample
                if graph.receivers[r].layer == rec.layer
                and (graph.receivers[r].qkv is None) == (rec.qkv is None)
            ]
            same = same or [r for r in sample if graph.receivers[r].layer == rec.layer]
            rate = statistics.mean(per_receiver_rate[r] for r in same)
            est += rate * int(graph.n_upstream[rec.index])
        results["exact_sampled_edges"] = edges_done
        results["exact_all_edges_estimated_s"] = est
        results["exact_per_edge_s"] = est / graph.n_edges
        results["exact_speedup_vs_forward_per_edge"] = (F * graph.n_edges) / est

    results["config"] = {
        "layers": args.layers,
        "heads": args.heads,
        "d_model": args.d_model,
        "edges": graph.n_edges,
        "prompts": n,
        "tokens": T,
        "device": args.device,
    }
    results["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    command = "python -m benchmarks.speed " + " ".join(argv or [])
    results["command"] = command.strip()
    _write(Path(args.out), results)
    print(json.dumps(results, indent=1))
    return results


def _write(path: Path, r: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    c = r["config"]
    lines = [
        "# Speed: scoring methods vs the bare Hugging Face forward/backward",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {r['machine']}  ",
        f"Model: GPT-2 shape, {c['layers']} layers x {c['heads']} heads, d_model {c['d_model']}, "
        f"random weights, {c['edges']:,} edges; {c['prompts']} prompts x {c['tokens']} tokens; "
        f"device {c['device']}.",
        "",
        "| quantity | seconds | ratio | target |",
        "| --- | --- | --- | --- |",
        f"| HF forward (F) | {r['hf_forward_s']:.3f} | | |",
        f"| HF forward + backward (F + B) | {r['hf_forward_backward_s']:.3f} | | |",
        f"| circuitfind forward | {r['circuitfind_forward_s']:.3f} | "
        f"{r['circuitfind_forward_s'] / r['hf_forward_s']:.2f} x F | |",
        f"| EAP, all edges | {r['eap_s']:.3f} | {r['eap_vs_2F_plus_B']:.2f} x (2F + B) | <= 1.3 |",
        f"| EAP-IG-inputs, 5 steps | {r['eap_ig_inputs_5_s']:.3f} | "
        f"{r['eap_ig_vs_6F_plus_5B']:.2f} x (6F + 5B) | <= 1.3 |",
        f"| exact patching, all edges (estimated from {r['exact_sampled_edges']} sampled edges) | "
        f"{r['exact_all_edges_estimated_s']:.0f} | "
        f"{r['exact_speedup_vs_forward_per_edge']:.2f} x faster than one F per edge | >= 4 |",
        "",
        "Exact patching of every edge is timed on a stratified sample of receivers (each layer's "
        "attention and MLP receivers and the logits) and extrapolated by edge count.",
        "",
        "Raw: `" + json.dumps(r) + "`",
        "",
    ]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
