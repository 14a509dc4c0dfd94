"""The speed suite's report: a table per case (each method against its floor and target),
the scaling tables and plots, and the comparison with auto-circuit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from circuitfind.bench.speed.cases import METHOD_NAMES

__all__ = ["render_markdown", "write_plots"]


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _case_table(c: dict[str, Any]) -> list[str]:
    lines = [
        f"### {c['case']}",
        "",
        f"{c['layers']} layers x {c['heads']} heads, d_model {c['d_model']}, {c['edges']:,} edges; "
        f"{c['prompts']} prompts x {c['tokens']} tokens. HF forward F = {_fmt(c['hf_F_s'])} s, "
        f"F + B = {_fmt(c['hf_FB_s'])} s (medians of {len(c['hf_F_runs'])} runs, before and after "
        f"the methods); circuitfind's own forward {_fmt(c['ours_F_s'])} s "
        f"({c['ours_F_s'] / c['hf_F_s']:.2f} x F).",
        "",
        "| method | seconds | x F | ratio to its floor | target | met | how |",
        "| --- | ---: | ---: | --- | --- | --- | --- |",
    ]
    for name in METHOD_NAMES:
        m = c["methods"].get(name)
        if m is None:
            continue
        if "ratio" in m:
            ratio = f"{m['ratio']:.2f} x ({m['baseline']})"
        elif "speedup" in m:
            ratio = f"{m['speedup']:.2f} x faster than {m['baseline']}"
        elif "per_edge_s" in m:
            ratio = f"{m['per_edge_s']:.4f} s per edge"
        elif "per_node_s" in m:
            ratio = f"{m['per_node_s']:.4f} s per node"
        else:
            ratio = ""
        met = {True: "yes", False: "**no**"}.get(m.get("met"), "")
        lines.append(
            f"| {name} | {_fmt(m['seconds'])} | {m['x_F']:.1f} | {ratio} | "
            f"{m.get('target_text', '')} | {met} | {m['how']} |"
        )
    bound = c.get("exact_bound")
    ex = c["methods"].get("exact", {})
    if bound and "speedup" in ex:
        lines += [
            "",
            f"Exact patching's arithmetic bound here (`bench.speed.bounds`: multiply-adds of a "
            f"forward over those of the average edge's patched pass): "
            f"{bound['speedup']:.2f} x; measured {ex['speedup']:.2f} x, "
            f"{ex['speedup'] / bound['speedup']:.0%} of it.",
        ]
    return [*lines, ""]


def render_markdown(r: dict[str, Any], plots: dict[str, str]) -> list[str]:
    """The report's body (the header comes from ``Report``)."""
    lines = [
        "The machine is shared and noisy: each time is the median of repeated runs, "
        "and the HF baseline is measured in the same process, before and after the methods, so "
        "the ratios compare like with like. F is one HF forward over the batch, B one backward "
        "(B = (F + B) - F).",
        "",
        "Exact patching and ACDC over a whole GPT-2-small graph take hours on a CPU: where a "
        "method's estimate exceeds the suite's budget, it is timed on a stratified sample of its "
        "patched passes and extrapolated by edge count (the `how` column says which). ACDC's "
        "extrapolation assumes every edge is tried once (an upper bound: ACDC skips the edges "
        "of nodes that no longer feed anything), each trial timed with every other edge kept "
        "(not a bound: a real run's trials, with edges removed downstream, cost more; "
        "`speed_acdc.md` times real trials against auto-circuit's).",
        "",
        "## Per method",
        "",
    ]
    for c in r["cases"]:
        if "error" in c:
            lines += [f"### {c['case']}", "", f"Could not run: {c['error']}", ""]
            continue
        lines += _case_table(c)
    s = r["scaling"]
    lines += [
        "## Scaling",
        "",
        "Time against the number of prompts (random GPT-2 "
        f"{s['prompts'][0]['layers']}x{s['prompts'][0]['heads']} d{s['prompts'][0]['d_model']}, "
        f"{s['prompts'][0]['tokens']} tokens) and against graph size (layers x heads, "
        f"{s['graph_size'][0]['prompts']} prompts). Exact: every edge, estimated as above "
        "(graph size only; its cost is linear in the prompts by construction). "
        "Single runs (no repeats) on a noisy machine: read the trend, not the third digit.",
        "",
    ]
    for key, title in (("prompts", "Prompts"), ("graph_size", "Graph size")):
        if key in plots:
            lines += [f"![{title}]({plots[key]})", ""]
        lines += [
            "| shape | edges | prompts | HF F s | HF F+B s | EAP s | EAP / (2F + B) "
            "| exact, all edges s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for p in s[key]:
            lines.append(
                f"| {p['layers']}x{p['heads']} d{p['d_model']} | {p['edges']:,} | {p['prompts']} | "
                f"{_fmt(p['hf_F_s'])} | {_fmt(p['hf_FB_s'])} | {_fmt(p['eap_s'])} | "
                f"{p['eap_vs_2F_plus_B']:.2f} | {_fmt(p['exact_all_edges_s'])} |"
            )
        lines.append("")
    lines += ["## Against auto-circuit", ""]
    ac = r["autocircuit"]
    if not ac.get("available"):
        lines += [f"auto-circuit unavailable: {ac.get('reason')}. Ours alone above.", ""]
    else:
        av = ac["versions"]
        lines += [
            f"auto-circuit {av['auto_circuit']} (TransformerLens {av['transformer_lens']}, "
            f"transformers {av['transformers']}, torch {av['torch']}) in its own virtual "
            "environment (`benchmarks/autocircuit/setup_venv.sh`), on the same random weights "
            "(moved as safetensors) and the same token batches, resample ablation, logit "
            "difference. Its TransformerLens model matches the HF logits to "
            f"{ac['big']['tl_vs_hf_max_abs_logit_diff']:.1e}. Its patchable forward on the big "
            f"model: {_fmt(ac['big']['their_patchable_forward_s'])} s (HF F "
            f"{_fmt(ac['big']['hf_F_s'])} s, F + B {_fmt(ac['big']['hf_FB_s'])} s). "
            + (
                f"Its peak memory: {ac['peak_rss_gb']:.1f} GB (resident). "
                if "peak_rss_gb" in ac
                else ""
            )
            + f"Edge counts: ours "
            f"{ac['big']['edges']:,}, theirs {ac['big']['their_edges']:,}. Spearman is over the "
            "edges both score, signed and on |score| (auto-circuit's gradients are of "
            "-(logit difference); they are sign-flipped). auto-circuit's EAP-IG interpolates "
            "the edge masks over k + 1 points (0..1); ours (activations) over k points.",
            "",
            "| method | model | ours s | auto-circuit s | speed-up | Spearman signed "
            "| Spearman abs | note |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for row in ac["rows"]:
            rho = row["spearman"] or {}
            lines.append(
                f"| {row['method']} | {row['model']} | {_fmt(row['ours_s'])} | "
                f"{_fmt(row['autocircuit_s'])} | {_fmt(row['speedup'], 1)} x | "
                f"{_fmt(rho.get('signed'))} | {_fmt(rho.get('abs'))} | {row['note']} |"
            )
        lines.append("")
    if "eapig" in r:
        from circuitfind.bench.speed.eapig import render as render_eapig

        lines += ["", *render_eapig(r["eapig"])]
    return lines


def write_plots(r: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """``speed_prompts.png`` and ``speed_graph_size.png``; {} when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    out: dict[str, str] = {}
    series = (
        ("hf_F_s", "HF forward (F)"),
        ("hf_FB_s", "HF forward + backward"),
        ("eap_s", "EAP, all edges"),
        ("exact_all_edges_s", "exact, all edges (est.)"),
    )
    for key, xkey, xlabel in (
        ("prompts", "prompts", "prompts (x 16 tokens)"),
        ("graph_size", "edges", "edges (layers x heads)"),
    ):
        points = r["scaling"][key]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [p[xkey] for p in points]
        for skey, label in series:
            ys = [p[skey] for p in points]
            if all(y is not None for y in ys):
                ax.plot(xs, ys, marker="o", label=label)
        if key == "graph_size":
            for p in points:
                ax.annotate(f"{p['layers']}x{p['heads']}", (p["edges"], p["eap_s"]), fontsize=7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds (log)")
        ax.set_title(f"Time vs {xlabel.split(' ')[0]}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"speed_{key}.png"
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        out[key] = name
    return out
