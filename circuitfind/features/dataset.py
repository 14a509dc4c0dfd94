"""Dataset-level feature circuits (Marks et al. 2024, "Sparse Feature Circuits").

Over a task's prompt set, with every site's transcoder spliced in and its error added back
(so the spliced model is the real one), each feature's indirect effect on the task metric is
estimated by attribution patching: ``IE(f) ≈ Σ_pos (a_f^abl − a_f^clean) · ∂m/∂a_f``, summed
over positions and averaged over prompts; each site's error node gets the same estimate over
its error vector. ``ablation`` sets ``a^abl``: ``corrupted`` (the activation on the prompt's
corrupted twin, as circuitfind's components are patched), ``zero``, or ``mean`` (the mean
activation over the clean prompts, per position). The circuit keeps the nodes with
|IE| above ``threshold`` (or the ``top_n`` largest); faithfulness is measured as for
components: every other feature and error is ablated, and
``f = (m(C) − m(∅)) / (m(M) − m(∅))`` with its bootstrap error over prompts
(``circuitfind.evaluation.measure``). Nodes only: edges between features are left to the
per-prompt attribution graphs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from circuitfind.errors import InputError
from circuitfind.evaluation import measure
from circuitfind.features.training import spliced_hooks
from circuitfind.features.transcoder import Transcoder
from circuitfind.model import Model

__all__ = ["FeatureCircuit", "feature_circuit"]

ABLATIONS = ("corrupted", "zero", "mean")


@dataclass
class FeatureCircuit:
    """Feature and error nodes with their indirect effects, the kept set, its faithfulness."""

    scores: dict[str, Tensor]  # site -> [d_sae] mean IE of each feature
    error_scores: dict[str, float]  # site -> mean IE of its error node
    kept: dict[str, list[int]]  # site -> kept features
    kept_errors: list[str]
    faithfulness: Any = None  # circuitfind.evaluation.Faithfulness
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_nodes(self) -> int:
        return sum(len(v) for v in self.kept.values()) + len(self.kept_errors)

    def top(self, n: int = 10) -> list[tuple[str, float]]:
        """The ``n`` nodes of largest |IE|: (``site.f{i}`` or ``site.err``, IE)."""
        items = [(f"{s}.f{i}", float(v[i])) for s, v in self.scores.items() for i in range(len(v))]
        items += [(f"{s}.err", v) for s, v in self.error_scores.items()]
        return sorted(items, key=lambda kv: -abs(kv[1]))[:n]

    def to_dict(self) -> dict[str, Any]:
        f = self.faithfulness
        return {
            "nodes": [
                {"node": f"{s}.f{i}", "ie": float(self.scores[s][i])}
                for s, idx in self.kept.items()
                for i in idx
            ]
            + [{"node": f"{s}.err", "ie": self.error_scores[s]} for s in self.kept_errors],
            "n_nodes": self.n_nodes,
            "faithfulness": None
            if f is None
            else {"value": f.value, "stderr": f.stderr, "ci95": [f.ci_low, f.ci_high]},
            "top": self.top(20),
            "meta": self.meta,
        }


def _site_io(
    model: Model, tcs: dict[str, Transcoder], tokens: Tensor, mask: Tensor | None
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Each site's activations [b, T, d_sae] and error [b, T, d] on a batch (no grad)."""
    reads: dict[str, Tensor] = {}
    hooks: dict[str, Any] = {}
    for site in tcs:
        layer = int(site[1:])
        if site.startswith("a"):

            def grab_a(y: Tensor, site: str = site) -> Tensor:
                reads[site + ":x"] = y
                reads[site + ":y"] = y
                return y

            hooks[f"attn_out.{layer}"] = grab_a
        else:
            point = f"resid_pre.{layer}" if model.cfg.parallel_attn_mlp else f"resid_mid.{layer}"
            lw = model.w.layers[layer]

            def grab_in(x: Tensor, site: str = site, lw: Any = lw) -> Tensor:
                reads[site + ":x"] = model.norm(x, lw.ln2_w, lw.ln2_b, lw.ln2_eps)
                return x

            def grab_out(y: Tensor, site: str = site) -> Tensor:
                reads[site + ":y"] = y
                return y

            hooks[point] = grab_in
            hooks[f"mlp_out.{layer}"] = grab_out
    with torch.no_grad():
        model(tokens, mask, hooks=hooks)
        acts = {s: tc.encode(reads[s + ":x"]) for s, tc in tcs.items()}
        errs = {s: reads[s + ":y"] - tc(reads[s + ":x"]) for s, tc in tcs.items()}
    return acts, errs


def _metric(task: Any, logits: Tensor, idx: Tensor) -> Tensor:
    return task.metric_fn(logits, idx, reduce="none")


def feature_circuit(
    model: Model,
    transcoders: dict[str, Transcoder],
    task: Any,
    *,
    ablation: str = "corrupted",
    threshold: float | None = None,
    top_n: int | None = None,
    batch_size: int = 32,
    n_boot: int = 1000,
) -> FeatureCircuit:
    """A task's feature circuit by attribution patching, pruned and measured (module doc)."""
    if ablation not in ABLATIONS:
        raise InputError(f"unknown ablation {ablation!r}; choose from {', '.join(ABLATIONS)}")
    if threshold is None and top_n is None:
        top_n = 20
    tcs = {s: tc.eval() for s, tc in transcoders.items()}
    for tc in tcs.values():
        tc.requires_grad_(False)
    n = len(task)
    mean_acts: dict[str, Tensor] = {}
    if ablation == "mean":
        sums: dict[str, Tensor] = {}
        for start in range(0, n, batch_size):
            sub = task[start : start + batch_size]
            acts, _ = _site_io(model, tcs, sub.clean, sub.attention_mask)
            for s, a in acts.items():
                sums[s] = sums.get(s, 0) + a.sum(0)
        mean_acts = {s: v / n for s, v in sums.items()}

    def ablated(sub: Any, acts: dict[str, Tensor], errs: dict[str, Tensor]) -> tuple[Any, Any]:
        if ablation == "corrupted":
            return _site_io(model, tcs, sub.corrupted, sub.attention_mask)
        if ablation == "zero":
            return {s: torch.zeros_like(a) for s, a in acts.items()}, {
                s: torch.zeros_like(e) for s, e in errs.items()
            }
        return {s: mean_acts[s].expand_as(a) for s, a in acts.items()}, errs

    scores = {s: torch.zeros(tc.cfg.d_sae, dtype=torch.float64) for s, tc in tcs.items()}
    err_scores = dict.fromkeys(tcs, 0.0)
    batches = []
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(n, start + batch_size))
        sub = task[start : start + batch_size]
        acts, errs = _site_io(model, tcs, sub.clean, sub.attention_mask)
        abl_a, abl_e = ablated(sub, acts, errs)
        batches.append((idx, sub, acts, errs, abl_a, abl_e))
        # zero offsets on every activation: their gradients are the total derivatives ∂m/∂a
        # (downstream features recomputed), as attribution patching needs
        leaves = {s: torch.zeros_like(a).requires_grad_(True) for s, a in acts.items()}
        e_leaves = {s: e.clone().requires_grad_(True) for s, e in errs.items()}
        hooks = spliced_hooks(model, tcs, errors=e_leaves, edit=lambda s, a, L=leaves: a + L[s])
        logits = model(sub.clean, sub.attention_mask, hooks=hooks)
        m = _metric(task, logits, idx).sum()
        grads = torch.autograd.grad(m, [*leaves.values(), *e_leaves.values()])
        for j, s in enumerate(leaves):
            g = grads[j]
            scores[s] += ((abl_a[s] - acts[s]) * g).sum((0, 1)).double()
            ge = grads[len(leaves) + j]
            err_scores[s] += float(((abl_e[s] - errs[s]) * ge).sum())
    for s in scores:
        scores[s] /= n
        err_scores[s] /= n

    # ---- prune
    flat = [(abs(float(v[i])), s, i) for s, v in scores.items() for i in range(len(v))]
    flat += [(abs(v), s, -1) for s, v in err_scores.items()]
    flat.sort(key=lambda t: -t[0])
    chosen = flat[:top_n] if top_n is not None else [t for t in flat if t[0] > (threshold or 0)]
    kept: dict[str, list[int]] = {s: [] for s in tcs}
    kept_err: list[str] = []
    for _, s, i in chosen:
        (kept_err.append(s) if i < 0 else kept[s].append(i))

    # ---- faithfulness: everything outside the circuit ablated
    def run(mode: str) -> Tensor:
        vals = []
        for idx, sub, _acts, errs, abl_a, abl_e in batches:
            keep = {
                s: torch.zeros(tc.cfg.d_sae, dtype=torch.bool) for s, tc in tcs.items()
            }  # fmt: skip
            if mode == "circuit":
                for s, ids in kept.items():
                    keep[s][ids] = True
            elif mode == "full":
                keep = {s: torch.ones_like(k) for s, k in keep.items()}
            e_use = {
                s: errs[s] if mode == "full" or (mode == "circuit" and s in kept_err) else abl_e[s]
                for s in tcs
            }

            def edit(s: str, a: Tensor, keep: Any = keep, abl_a: Any = abl_a) -> Tensor:
                return torch.where(keep[s], a, abl_a[s])

            hooks = spliced_hooks(model, tcs, errors=e_use, edit=edit)
            with torch.no_grad():
                vals.append(_metric(task, model(sub.clean, sub.attention_mask, hooks=hooks), idx))
        return torch.cat(vals).detach().double()

    full, empty, circ = run("full"), run("empty"), run("circuit")
    faith = measure(circ, full, empty, n_boot=n_boot)
    return FeatureCircuit(
        scores=scores,
        error_scores=err_scores,
        kept=kept,
        kept_errors=kept_err,
        faithfulness=faith,
        meta={
            "task": getattr(task, "name", ""),
            "n_prompts": n,
            "ablation": ablation,
            "top_n": top_n,
            "threshold": threshold,
            "m_full": float(full.mean()),
            "m_empty": float(empty.mean()),
            "m_circuit": float(circ.mean()),
        },
    )
