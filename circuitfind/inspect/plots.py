"""Plots for the inspection tools (matplotlib, headless). Each writes one file and returns it;
the format follows the suffix (png, svg, pdf)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "plot_attention_grid",
    "plot_attribution",
    "plot_dla",
    "plot_head_scores",
    "plot_lens",
    "plot_probe",
]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def plot_lens(
    logp: Tensor, token_labels: Sequence[str], top_labels: Sequence[Sequence[str]], path: str | Path
) -> Path:
    """Layers × positions heatmap of the top token's probability, the top token written in.

    Args:
        logp: [n_layers + 1, pos, vocab] one prompt's lens log-probabilities.
        token_labels: the input tokens (x axis).
        top_labels: [n_layers + 1][pos] the top predicted token's text.
    """
    plt = _plt()
    probs = logp.exp().amax(-1).cpu().numpy()  # [layer, pos]
    n_layers, pos = probs.shape
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * pos), max(3, 0.5 * n_layers + 1)))
    im = ax.imshow(probs, cmap="Blues", vmin=0, vmax=1, aspect="auto", origin="lower")
    for i in range(n_layers):
        for j in range(pos):
            ax.text(
                j, i, str(top_labels[i][j])[:8], ha="center", va="center", fontsize=7,
                color="white" if probs[i, j] > 0.6 else "black",
            )  # fmt: skip
    ax.set_xticks(range(pos), [str(t)[:8] for t in token_labels], rotation=45, ha="right")
    ax.set_yticks(
        range(n_layers), [f"L{i}" if i < n_layers - 1 else "out" for i in range(n_layers)]
    )
    ax.set_xlabel("input token")
    ax.set_ylabel("residual stream before layer")
    ax.set_title("lens: top next-token guess (colour = its probability)")
    fig.colorbar(im, ax=ax, shrink=0.8)
    return _save(fig, path)


def plot_dla(contributions: Mapping[str, float], path: str | Path, *, top: int = 20) -> Path:
    """Bar chart of the largest direct contributions (by |value|)."""
    plt = _plt()
    items = sorted(contributions.items(), key=lambda kv: -abs(kv[1]))[:top]
    names = [k for k, _ in items][::-1]
    values = [v for _, v in items][::-1]
    fig, ax = plt.subplots(figsize=(6, max(2.5, 0.3 * len(items) + 1)))
    ax.barh(names, values, color=["tab:blue" if v >= 0 else "tab:red" for v in values])
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("direct contribution to the logit (difference)")
    ax.set_title("direct logit attribution")
    return _save(fig, path)


def plot_attention_grid(
    patterns: Tensor, token_labels: Sequence[str], path: str | Path, *, max_heads: int = 64
) -> Path:
    """A grid of attention patterns, one panel per head: patterns [n_layers, n_heads, q, k]."""
    plt = _plt()
    n_layers, n_heads = patterns.shape[:2]
    heads = [(ly, h) for ly in range(n_layers) for h in range(n_heads)][:max_heads]
    cols = min(n_heads, 8)
    rows = (len(heads) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    labels = [str(t)[:6] for t in token_labels]
    for ax, (ly, h) in zip(axes.flat, heads):
        ax.imshow(patterns[ly, h].float().cpu().numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"L{ly}H{h}", fontsize=8)
        if len(labels) <= 12:
            ax.axis("on")
            ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=5)
            ax.set_yticks(range(len(labels)), labels, fontsize=5)
    fig.suptitle("attention patterns (rows: query, columns: key)")
    fig.tight_layout()
    return _save(fig, path)


def plot_head_scores(scores: Mapping[str, Tensor], path: str | Path) -> Path:
    """One layers × heads heatmap per role score."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(scores), figsize=(3.2 * len(scores), 3), squeeze=False)
    for ax, (role, s) in zip(axes[0], scores.items()):
        lo = -1.0 if role == "copying" else 0.0
        im = ax.imshow(s.numpy(), cmap="RdBu_r" if lo < 0 else "Blues", vmin=lo, vmax=1)
        ax.set_title(role.replace("_", " "), fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax, shrink=0.7)
    fig.tight_layout()
    return _save(fig, path)


def plot_probe(
    test_accuracy: Mapping[str, float], path: str | Path, *, chance: float | None = None
) -> Path:
    """Held-out probe accuracy by site (layer)."""
    plt = _plt()
    sites = list(test_accuracy)
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(sites) + 2), 3))
    ax.plot(range(len(sites)), [test_accuracy[s] for s in sites], "o-", label="held-out accuracy")
    if chance is not None:
        ax.axhline(chance, color="0.5", ls="--", label="majority class")
    ax.set_xticks(range(len(sites)), sites, rotation=45, ha="right")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    ax.set_title("linear probe accuracy by layer")
    return _save(fig, path)


def plot_attribution(token_labels: Sequence[str], scores: Tensor, path: str | Path) -> Path:
    """Tokens coloured by attribution (red positive, blue negative), the score under each."""
    plt = _plt()
    s = scores.float().cpu()
    vmax = float(s.abs().max()) or 1.0
    cmap = plt.get_cmap("RdBu_r")
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(token_labels)), 1.4))
    ax.axis("off")
    for i, (tok, v) in enumerate(zip(token_labels, s.tolist())):
        color = cmap(0.5 + 0.5 * v / vmax)
        ax.text(
            i, 0.6, str(tok), ha="center", va="center", fontsize=10,
            bbox={"facecolor": color, "edgecolor": "none", "boxstyle": "round,pad=0.3"},
        )  # fmt: skip
        ax.text(i, 0.1, f"{v:+.2f}", ha="center", va="center", fontsize=7)
    ax.set_xlim(-0.7, len(token_labels) - 0.3)
    ax.set_ylim(-0.2, 1)
    return _save(fig, path)


def top_tokens(logp: Tensor, decode: Any) -> list[list[str]]:
    """The top token's text at each [layer, pos] of a lens [layer, pos, vocab]."""
    top = logp.argmax(-1)
    return [[str(decode(int(t))) for t in row] for row in torch.as_tensor(top)]
