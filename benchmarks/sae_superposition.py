"""SAE vs the toy model of superposition: do SAE decoder directions recover the true features?

Trains the toy model (n sparse features in d_hidden < n dimensions, Elhage et al. 2022), then a
ReLU+L1 SAE and a TopK SAE on its hidden layer, and reports, for each true feature direction, the
largest cosine similarity with any decoder direction (mean over features; target ≥ 0.95). Writes
``reports/sae_superposition.md`` and ``reports/sae_superposition.png``.

    PYTHONPATH=. python benchmarks/sae_superposition.py            # about 2-4 minutes on 2 cores
    PYTHONPATH=. python benchmarks/sae_superposition.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from circuitfind.inspect.sae import SAEConfig, evaluate_sae, train_sae
from circuitfind.inspect.toy_superposition import (
    feature_recovery,
    represented_features,
    sample_features,
    train_toy_model,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-features", type=int, default=20)
    ap.add_argument("--d-hidden", type=int, default=5)
    ap.add_argument("--p", type=float, default=0.05, help="feature probability")
    ap.add_argument("--d-sae", type=int, default=40)
    ap.add_argument("--toy-steps", type=int, default=3000)
    ap.add_argument("--sae-steps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="few steps (smoke test)")
    ap.add_argument(
        "--sweep",
        default="0.01,0.02,0.05,0.1,0.2,0.4",
        help="feature probabilities for the sparsity sweep ('' to skip)",
    )
    ap.add_argument("--out", default="reports")
    args = ap.parse_args(argv)
    if args.quick:
        args.toy_steps, args.sae_steps = 400, 400
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead
    t0 = time.time()
    toy = train_toy_model(
        args.n_features, args.d_hidden, args.p, steps=args.toy_steps, seed=args.seed
    )
    represented = represented_features(toy)
    true_dirs = toy.feature_directions()
    gen = torch.Generator().manual_seed(args.seed + 7)
    x = sample_features(200_000, args.n_features, args.p, generator=gen)
    with torch.no_grad():
        h = toy.hidden(x)
    t_toy = time.time() - t0
    results = {}
    saes = {}
    for name, cfg in {
        "ReLU+L1": SAEConfig(args.d_hidden, args.d_sae, "standard", l1_coefficient=0.3),
        "TopK (k=2)": SAEConfig(args.d_hidden, args.d_sae, "topk", k=2),
    }.items():
        t = time.time()
        sae = train_sae(h[:150_000], cfg, steps=args.sae_steps, batch_size=1024, lr=3e-3)
        rec = feature_recovery(true_dirs, sae.W_dec.detach())
        metrics = evaluate_sae(sae, h[150_000:])
        results[name] = {
            "mmcs_all": float(rec.mean()),
            "mmcs_represented": float(rec[represented].mean()),
            "min_cos": float(rec.min()),
            "per_feature": rec.tolist(),
            **metrics,
            "seconds": time.time() - t,
        }
        saes[name] = sae
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _plot(toy, true_dirs, saes, results, out / "sae_superposition.png")
    sweep = [_sweep_point(args, float(p)) for p in args.sweep.split(",") if p.strip()]
    cmd = "PYTHONPATH=. python benchmarks/sae_superposition.py" + " ".join(
        [""] + (argv if argv is not None else sys.argv[1:])
    )
    _report(args, represented, results, t_toy, time.time() - t0, cmd, out, sweep)
    print(json.dumps({k: {m: v[m] for m in ("mmcs_all", "l0")} for k, v in results.items()}))
    return 0


def _sweep_point(args: argparse.Namespace, p: float) -> dict[str, float]:
    """Toy model and both SAEs at feature probability p: stored features and MMCS."""
    toy = train_toy_model(args.n_features, args.d_hidden, p, steps=args.toy_steps, seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed + 7)
    x = sample_features(100_000, args.n_features, p, generator=gen)
    with torch.no_grad():
        h = toy.hidden(x)
    stored = represented_features(toy)
    row: dict[str, float] = {"p": p, "stored": int(stored.sum())}
    expected = args.n_features * p  # mean active features per sample
    k = min(max(1, round(2 * expected)), args.d_hidden - 1)  # k >= d_hidden is trivially exact
    for name, cfg in {
        "relu": SAEConfig(args.d_hidden, args.d_sae, "standard", l1_coefficient=0.3),
        "topk": SAEConfig(args.d_hidden, args.d_sae, "topk", k=k),
    }.items():
        sae = train_sae(h, cfg, steps=args.sae_steps, batch_size=1024, lr=3e-3)
        rec = feature_recovery(toy.feature_directions(), sae.W_dec.detach())
        row[name] = float(rec[stored].mean())
        row[f"{name}_ev"] = evaluate_sae(sae, h[-20_000:])["explained_variance"]
    row["k"] = k
    return row


def _plot(toy, true_dirs, saes, results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    w = toy.W.detach()
    gram = (w.T @ w).numpy()
    im = axes[0].imshow(gram, cmap="RdBu_r", vmin=-1.2, vmax=1.2)
    axes[0].set_title("toy model WᵀW (off-diagonal = interference)")
    axes[0].set_xlabel("feature")
    axes[0].set_ylabel("feature")
    fig.colorbar(im, ax=axes[0], shrink=0.8)
    # 2-D view: the top two principal directions of the true features
    _, _, v = torch.linalg.svd(true_dirs, full_matrices=False)
    basis = v[:2].T  # [d_hidden, 2]
    ax = axes[1]
    for d in true_dirs @ basis:
        ax.plot([0, float(d[0])], [0, float(d[1])], color="0.3", lw=1.5)
    colors = ["tab:orange", "tab:blue"]
    for (name, sae), c in zip(saes.items(), colors):
        dec = sae.W_dec.detach()
        dec = dec / dec.norm(dim=-1, keepdim=True)
        p = dec @ basis
        ax.scatter(p[:, 0], p[:, 1], s=14, color=c, label=f"{name} decoder", alpha=0.8)
    ax.set_aspect("equal")
    ax.set_title("feature directions (lines) and SAE decoders (dots), top-2 PCs")
    ax.legend(fontsize=8, loc="lower left")
    ax = axes[2]
    n = len(next(iter(results.values()))["per_feature"])
    width = 0.4
    for i, ((name, r), c) in enumerate(zip(results.items(), colors)):
        ax.bar(
            torch.arange(n) + (i - 0.5) * width,
            r["per_feature"],
            width,
            color=c,
            label=f"{name}: mean {r['mmcs_all']:.3f}",
        )
    ax.axhline(0.95, color="k", ls="--", lw=1, label="target 0.95")
    ax.set_ylim(0.5, 1.01)
    ax.set_xlabel("true feature")
    ax.set_ylabel("max cosine similarity with a decoder row")
    ax.set_title("recovery per feature")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _report(args, represented, results, t_toy, total, cmd, out: Path, sweep) -> None:
    lines = [
        "# SAE recovery of superposed features (toy model)",
        "",
        f"Command: `{cmd}` (total {total:.0f} s; toy model {t_toy:.0f} s; CPU, 1 thread).",
        "",
        f"Toy model: {args.n_features} features in {args.d_hidden} dimensions, feature "
        f"probability {args.p} (values uniform in [0, 1]), uniform importance, "
        f"{args.toy_steps} Adam steps. Features stored (‖W_i‖ > 0.5): "
        f"{int(represented.sum())} of {args.n_features} — more features than dimensions, "
        "so superposition is present.",
        "",
        f"SAEs: d_sae = {args.d_sae}, {args.sae_steps} steps of 1024 hidden vectors, trained on "
        "150k samples, evaluated on 50k held out. MMCS = mean over true features of the max "
        "cosine similarity with any decoder row (target ≥ 0.95).",
        "",
        "| SAE | MMCS (all) | MMCS (stored) | worst feature | L0 | explained var. | dead "
        "| seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['mmcs_all']:.4f} | {r['mmcs_represented']:.4f} | {r['min_cos']:.3f} "
            f"| {r['l0']:.2f} | {r['explained_variance']:.4f} | {r['dead_fraction']:.2f} "
            f"| {r['seconds']:.0f} |"
        )
    lines += ["", "![feature geometry](sae_superposition.png)", ""]
    if sweep:
        lines += [
            "## Sparsity sweep",
            "",
            f"Same sizes ({args.n_features} features in {args.d_hidden} dimensions); a fresh toy "
            "model per feature probability p. TopK's k = round(2 · n · p), clipped to "
            "[1, d_hidden − 1]; MMCS over the features the toy model stores. Denser "
            "features are stored less (the toy model drops features), and the SAE must separate "
            "more overlapping features per sample.",
            "",
            "| p | stored features | MMCS ReLU+L1 | EV ReLU+L1 | MMCS TopK | k | EV TopK |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in sweep:
            lines.append(
                f"| {r['p']:g} | {r['stored']} | {r['relu']:.4f} | {r['relu_ev']:.3f} "
                f"| {r['topk']:.4f} | {r['k']} | {r['topk_ev']:.3f} |"
            )
        lines.append("")
    (out / "sae_superposition.md").write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
