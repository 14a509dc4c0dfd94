"""SAE suite: do SAE decoder directions recover the true features of the toy model of
superposition?

Trains the toy model (n sparse features in d_hidden < n dimensions, Elhage et al. 2022), then a
ReLU+L1 SAE and a TopK SAE on its hidden layer, and reports, for each true feature direction, the
largest cosine similarity with any decoder direction (mean over features; target >= 0.95), and a
sweep over the feature probability. Writes ``sae_superposition.md``, ``.json`` and ``.png``:

    circuitfind benchmark --suite sae            # about 2-4 minutes on 2 cores
    circuitfind benchmark --suite sae --quick    # a smoke run (400 steps each)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from circuitfind.bench.common import Report, stamp
from circuitfind.inspect.sae import SAEConfig, evaluate_sae, train_sae
from circuitfind.inspect.toy_superposition import (
    feature_recovery,
    represented_features,
    sample_features,
    train_toy_model,
)

__all__ = ["run"]

SWEEP = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4)


@dataclass(frozen=True)
class _Args:
    n_features: int
    d_hidden: int
    p: float
    d_sae: int
    toy_steps: int
    sae_steps: int
    seed: int


def run(
    out_dir: Path,
    *,
    quick: bool,
    seed: int,
    n_features: int = 20,
    d_hidden: int = 5,
    p: float = 0.05,
    d_sae: int = 40,
    toy_steps: int = 3000,
    sae_steps: int = 2000,
    sweep: tuple[float, ...] = SWEEP,
    on_model: str = "zoo:induction-2l",
    site: str = "resid_pre.1",
    model_steps: int = 1000,
    command: str | None = None,
) -> dict[str, Any]:
    """Train the toy model and both SAEs, sweep the feature probability, write the report."""
    args = _Args(n_features, d_hidden, p, d_sae, toy_steps, sae_steps, seed)
    report = Report(
        "sae_superposition",
        "SAE recovery of superposed features (toy model)",
        stamp(seed, quick, command),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead
    try:
        results, saes, toy, true_dirs, represented, t_toy = _main(args)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        plot = out_dir / "sae_superposition.png"
        _plot(toy, true_dirs, saes, results, plot)
        report.files.append(plot.name)
        points = [_sweep_point(args, float(q)) for q in sweep]
        model_result = _on_model(on_model, site, model_steps, seed) if on_model else None
    finally:
        torch.set_num_threads(threads)
    report.add(*_body(args, represented, results, t_toy, points))
    if model_result is not None:
        report.add(*_model_body(model_result))
    report.data = {
        "config": asdict(args),
        "results": results,
        "sweep": points,
        "on_model": model_result,
    }
    files = report.write(out_dir)
    return {
        "files": files,
        **{k: {m: v[m] for m in ("mmcs_all", "l0")} for k, v in results.items()},
    }


def _main(args: _Args) -> tuple[dict[str, Any], dict[str, Any], Any, Tensor, Tensor, float]:
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
    return results, saes, toy, true_dirs, represented, t_toy


def _sweep_point(args: _Args, p: float) -> dict[str, float]:
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


def _plot(
    toy: Any, true_dirs: Tensor, saes: dict[str, Any], results: dict[str, Any], path: Path
) -> None:
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


def _body(
    args: _Args, represented: Tensor, results: dict[str, Any], t_toy: float, sweep: list[Any]
) -> list[str]:
    lines = [
        f"CPU, 1 torch thread; the toy model trained in {t_toy:.0f} s.",
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
    return lines


def _on_model(source: str, site: str, steps: int, seed: int) -> dict[str, Any]:
    """A TopK SAE at ``site`` of ``source``, trained on the data the model is evaluated on
    (``evaluation_data``) and spliced in on fresh data of the same kind."""
    import circuitfind as cf
    from circuitfind.inspect.sae import evaluation_data, site_activations, splice_metrics

    model = cf.load(source)
    train = evaluation_data(model, n=256, seed=seed)
    held = evaluation_data(model, n=256, seed=seed + 1)
    acts = torch.cat(
        list(site_activations(model, train.tokens, site, attention_mask=train.attention_mask))
    )
    cfg = SAEConfig(
        acts.shape[-1], 4 * acts.shape[-1], "topk", k=16, hook_name=site, model_name=source
    )
    sae = train_sae(acts, cfg, steps=steps, batch_size=1024, seed=seed)
    held_acts = torch.cat(
        list(site_activations(model, held.tokens, site, attention_mask=held.attention_mask))
    )
    metrics: dict[str, Any] = evaluate_sae(sae, held_acts)
    metrics.update(
        splice_metrics(
            model,
            sae,
            held.tokens,
            site,
            attention_mask=held.attention_mask,
            loss_weight=held.loss_weight,
        )
    )
    return {
        "model": source,
        "site": site,
        "train_data": train.source,
        "eval_data": held.source,
        "d_sae": cfg.d_sae,
        "k": cfg.k,
        **metrics,
    }


def _model_body(r: dict[str, Any]) -> list[str]:
    recovered = r["loss_recovered"]
    rec = f"{recovered:.3f}" if recovered is not None else r["loss_recovered_note"]
    return [
        f"## On a model: {r['model']} at {r['site']}",
        "",
        f"A TopK SAE (d_sae {r['d_sae']}, k {r['k']}, {r['train_steps']} steps of 1024 "
        f"activations, {r['seconds_per_step']:.3f} s a step) trained on {r['train_data']}; "
        f"evaluated on fresh data of the same kind ({r['eval_data']}). Next-token loss "
        "weighted as in training; loss recovered as SAELens defines it, (zero-ablated − "
        "spliced) / (zero-ablated − clean).",
        "",
        "| loss clean | loss spliced | loss zero-ablated | loss recovered | KL (nats/token) "
        "| explained var. | L0 | dead |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {r['loss_clean']:.4f} | {r['loss_spliced']:.4f} | {r['loss_zero']:.4f} | {rec} "
        f"| {r['kl']:.4f} | {r['explained_variance']:.4f} | {r['l0']:.1f} "
        f"| {r['dead_fraction']:.2f} |",
        "",
    ]
