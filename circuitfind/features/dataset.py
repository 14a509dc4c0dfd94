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
(``circuitfind.evaluation.measure``).

Edges (``edges=True``) join the kept nodes, as Marks et al. define them: for an upstream node
``u`` and a downstream node ``d``,
``IE(u → d) ≈ Σ_pos ∇_d m · (∂d/∂u)_direct · (u^abl − u^clean)``, summed over both nodes'
positions and averaged over prompts. ``∇_d m`` is ``d``'s total derivative (the node score's
gradient, held fixed); ``(∂d/∂u)_direct`` is the derivative of ``d`` with every *other* feature
and error node frozen at its clean value (a stop-gradient on each node's contribution), so
only the paths from ``u`` to ``d`` that pass through no other node count: the residual stream,
and the attention and MLP layers that have no transcoder. A transcoder's skip connection is a
path, not a node (its output follows its input, as in the attribution graphs). Upstream nodes
are the kept features and errors plus ``embed`` (the token embeddings, ablated as the nodes
are); downstream nodes are the kept features and errors plus ``metric`` (the direct effect of
a node on the task metric). An edge ``u → d`` with ``u`` at a site that ``d`` does not read
from (a later layer, or the parallel branch of the same layer) is zero and left out. The sum of
a downstream node's incoming edges over *all* upstream nodes is the first-order change of
``g · d`` when every node is ablated at once, each through its direct paths only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from circuitfind.errors import InputError
from circuitfind.evaluation import measure
from circuitfind.features.training import spliced_hooks
from circuitfind.features.transcoder import Transcoder, on_device
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
    # (upstream, downstream, mean IE of the edge): node names as in ``nodes``, plus ``embed``
    # (upstream only) and ``metric`` (downstream only); None when edges were not computed
    edges: list[tuple[str, str, float]] | None = None

    @property
    def nodes(self) -> list[str]:
        """The kept nodes, ``site.f{i}`` and ``site.err``, in site order."""
        out = [f"{s}.f{i}" for s, idx in self.kept.items() for i in idx]
        return out + [f"{s}.err" for s in self.kept_errors]

    def top_edges(self, n: int = 10) -> list[tuple[str, str, float]]:
        """The ``n`` edges of largest |IE|."""
        return sorted(self.edges or [], key=lambda e: -abs(e[2]))[:n]

    def to_networkx(self) -> Any:
        """A ``networkx.DiGraph``: kept nodes (attribute ``ie``), ``embed`` and ``metric``, and
        the edges (attribute ``weight``, the edge's IE)."""
        import networkx as nx

        g = nx.DiGraph()
        for name in self.nodes:
            site, _, rest = name.partition(".")
            ie = (
                self.error_scores[site]
                if rest == "err"
                else float(self.scores[site][int(rest[1:])])
            )
            g.add_node(name, ie=ie, site=site)
        for u, v, w in self.edges or []:
            g.add_edge(u, v, weight=w)
        return g

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
            "edges": None
            if self.edges is None
            else [{"from": u, "to": v, "ie": w} for u, v, w in self.edges],
            "faithfulness": None
            if f is None
            else {"value": f.value, "stderr": f.stderr, "ci95": [f.ci_low, f.ci_high]},
            "top": self.top(20),
            "meta": self.meta,
        }


def _site_io(
    model: Model, tcs: dict[str, Transcoder], tokens: Tensor, mask: Tensor | None
) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
    """Each site's activations [b, T, d_sae] and error [b, T, d], and the embeddings [b, T, d]
    on a batch (no grad)."""
    reads: dict[str, Tensor] = {}

    def grab_embed(e: Tensor) -> Tensor:
        reads["embed"] = e
        return e

    hooks: dict[str, Any] = {"embed": grab_embed}
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
    return acts, errs, reads["embed"]


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
    edges: bool = True,
    edge_threshold: float = 0.0,
    batch_size: int = 32,
    n_boot: int = 1000,
) -> FeatureCircuit:
    """A task's feature circuit by attribution patching, pruned, joined by edges and measured
    (module doc). ``edge_threshold`` keeps the edges with |IE| above it (default: every
    non-zero edge between kept nodes); ``edges=False`` skips them (one backward per kept node
    and batch)."""
    if ablation not in ABLATIONS:
        raise InputError(f"unknown ablation {ablation!r}; choose from {', '.join(ABLATIONS)}")
    if threshold is None and top_n is None:
        top_n = 20
    dev = model.device
    tcs = on_device(transcoders, dev)
    n = len(task)
    mean_acts: dict[str, Tensor] = {}
    mean_embed: Tensor | None = None
    if ablation == "mean":
        sums: dict[str, Tensor] = {}
        for start in range(0, n, batch_size):
            sub = task[start : start + batch_size]
            acts, _, emb = _site_io(model, tcs, sub.clean, sub.attention_mask)
            for s, a in acts.items():
                sums[s] = sums.get(s, 0) + a.sum(0)
            mean_embed = emb.sum(0) if mean_embed is None else mean_embed + emb.sum(0)
        mean_acts = {s: v / n for s, v in sums.items()}
        assert mean_embed is not None
        mean_embed = mean_embed / n

    def ablated(sub: Any, acts: Any, errs: Any, emb: Tensor) -> tuple[Any, Any, Tensor]:
        if ablation == "corrupted":
            return _site_io(model, tcs, sub.corrupted, sub.attention_mask)
        if ablation == "zero":
            return (
                {s: torch.zeros_like(a) for s, a in acts.items()},
                {s: torch.zeros_like(e) for s, e in errs.items()},
                torch.zeros_like(emb),
            )
        assert mean_embed is not None
        return (
            {s: mean_acts[s].expand_as(a) for s, a in acts.items()},
            errs,
            mean_embed.expand_as(emb),
        )

    scores = {
        s: torch.zeros(tc.cfg.d_sae, dtype=torch.float64, device=dev) for s, tc in tcs.items()
    }
    err_scores = dict.fromkeys(tcs, 0.0)
    batches = []
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(n, start + batch_size))
        sub = task[start : start + batch_size]
        acts, errs, emb = _site_io(model, tcs, sub.clean, sub.attention_mask)
        abl_a, abl_e, abl_emb = ablated(sub, acts, errs, emb)
        batches.append(_Batch(idx, sub, acts, errs, emb, abl_a, abl_e, abl_emb))
        grads, e_grads = _node_grads(model, tcs, task, batches[-1])
        for s in tcs:
            scores[s] += ((abl_a[s] - acts[s]) * grads[s]).sum((0, 1)).double()
            err_scores[s] += float(((abl_e[s] - errs[s]) * e_grads[s]).sum())
    for s in scores:
        scores[s] = (scores[s] / n).cpu()
        err_scores[s] /= n

    # ---- prune
    flat = [(abs(x), s, i) for s, v in scores.items() for i, x in enumerate(v.tolist())]
    flat += [(abs(v), s, -1) for s, v in err_scores.items()]
    flat.sort(key=lambda t: -t[0])
    chosen = flat[:top_n] if top_n is not None else [t for t in flat if t[0] > (threshold or 0)]
    kept: dict[str, list[int]] = {s: [] for s in tcs}
    kept_err: list[str] = []
    for _, s, i in chosen:
        (kept_err.append(s) if i < 0 else kept[s].append(i))

    edge_list = None
    if edges:
        edge_list = _edges(model, tcs, task, batches, kept, kept_err, n, edge_threshold)

    # ---- faithfulness: everything outside the circuit ablated
    def run(mode: str) -> Tensor:
        vals = []
        for bt in batches:
            keep = {
                s: torch.zeros(tc.cfg.d_sae, dtype=torch.bool, device=dev) for s, tc in tcs.items()
            }
            if mode == "circuit":
                for s, ids in kept.items():
                    keep[s][ids] = True
            elif mode == "full":
                keep = {s: torch.ones_like(k) for s, k in keep.items()}
            e_use = {
                s: bt.errs[s]
                if mode == "full" or (mode == "circuit" and s in kept_err)
                else bt.abl_e[s]
                for s in tcs
            }

            def edit(s: str, a: Tensor, keep: Any = keep, abl_a: Any = bt.abl_a) -> Tensor:
                return torch.where(keep[s], a, abl_a[s])

            hooks = spliced_hooks(model, tcs, errors=e_use, edit=edit)
            sub = bt.sub
            with torch.no_grad():
                logits = model(sub.clean, sub.attention_mask, hooks=hooks)
                vals.append(_metric(task, logits, bt.idx))
        return torch.cat(vals).detach().double()

    full, empty, circ = run("full"), run("empty"), run("circuit")
    faith = measure(circ, full, empty, n_boot=n_boot)
    return FeatureCircuit(
        scores=scores,
        error_scores=err_scores,
        kept=kept,
        kept_errors=kept_err,
        faithfulness=faith,
        edges=edge_list,
        meta={
            "task": getattr(task, "name", ""),
            "n_prompts": n,
            "ablation": ablation,
            "top_n": top_n,
            "threshold": threshold,
            "edge_threshold": edge_threshold if edges else None,
            "m_full": float(full.mean()),
            "m_empty": float(empty.mean()),
            "m_circuit": float(circ.mean()),
        },
    )


@dataclass
class _Batch:
    """One batch's prompts with its clean and ablated node values (features, errors, embed)."""

    idx: Tensor
    sub: Any
    acts: dict[str, Tensor]
    errs: dict[str, Tensor]
    emb: Tensor
    abl_a: dict[str, Tensor]
    abl_e: dict[str, Tensor]
    abl_emb: Tensor


def _node_grads(
    model: Model, tcs: dict[str, Transcoder], task: Any, bt: _Batch
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """∂m/∂a and ∂m/∂err on one batch: total derivatives (downstream nodes recomputed).

    Zero offsets on every activation and the clean errors as leaves: their gradients are what
    attribution patching needs."""
    leaves = {s: torch.zeros_like(a).requires_grad_(True) for s, a in bt.acts.items()}
    e_leaves = {s: e.clone().requires_grad_(True) for s, e in bt.errs.items()}
    hooks = spliced_hooks(model, tcs, errors=e_leaves, edit=lambda s, a: a + leaves[s])
    logits = model(bt.sub.clean, bt.sub.attention_mask, hooks=hooks)
    m = _metric(task, logits, bt.idx).sum()
    grads = torch.autograd.grad(m, [*leaves.values(), *e_leaves.values()])
    k = len(leaves)
    return dict(zip(leaves, grads[:k])), dict(zip(e_leaves, grads[k:]))


def _edges(
    model: Model,
    tcs: dict[str, Transcoder],
    task: Any,
    batches: list[_Batch],
    kept: dict[str, list[int]],
    kept_err: list[str],
    n: int,
    edge_threshold: float,
) -> list[tuple[str, str, float]]:
    """Marks et al.'s edge effects between the kept nodes (module doc), averaged over prompts:
    (upstream, downstream, IE) for every non-zero edge above ``edge_threshold``."""
    up_names = [f"{s}.f{i}" for s in tcs for i in kept[s]] + [f"{s}.err" for s in kept_err]
    up_names.append("embed")
    down_names = [*up_names[:-1], "metric"]
    W = sum(_batch_edges(model, tcs, task, bt, kept, kept_err) for bt in batches)
    assert isinstance(W, Tensor)
    mean = (W / n).cpu().tolist()
    out = []
    for r, dn in enumerate(down_names):
        for c, un in enumerate(up_names):
            w = mean[r][c]
            if w != 0.0 and abs(w) > edge_threshold and un != dn:
                out.append((un, dn, w))
    return out


def _batch_edges(
    model: Model,
    tcs: dict[str, Transcoder],
    task: Any,
    bt: _Batch,
    kept: dict[str, list[int]],
    kept_err: list[str],
) -> Tensor:
    """One batch's summed edge effects [downstream, upstream] (order of ``_edges``' names).

    The node gradients (one forward + backward), then one run in which every node's
    contribution is detached and re-entered through a leaf of the same value, so a leaf's
    gradient is the node's *direct* effect; one backward per downstream node of ``g_d · d``
    (and one of the metric) gives that node's incoming edges from every upstream node at once.
    """
    order = list(tcs)
    g_a, g_e = _node_grads(model, tcs, task, bt)
    leaves = {s: torch.zeros_like(a).requires_grad_(True) for s, a in bt.acts.items()}
    e_leaves = {s: e.clone().requires_grad_(True) for s, e in bt.errs.items()}
    emb_leaf = torch.zeros_like(bt.emb).requires_grad_(True)
    record: dict[str, tuple[Tensor, Tensor]] = {}
    hooks = spliced_hooks(
        model, tcs, errors=e_leaves, edit=lambda s, a: a.detach() + leaves[s], record=record
    )
    hooks["embed"] = lambda e: e.detach() + emb_leaf
    logits = model(bt.sub.clean, bt.sub.attention_mask, hooks=hooks)
    m = _metric(task, logits, bt.idx).sum()
    live_a = {s: tcs[s].encode(x) for s, (x, _y) in record.items()}
    live_e = {s: y - tcs[s](x) for s, (x, y) in record.items()}
    inputs = [*(leaves[s] for s in order), *(e_leaves[s] for s in order), emb_leaf]
    deltas = {s: bt.abl_a[s] - bt.acts[s] for s in order}
    e_deltas = {s: bt.abl_e[s] - bt.errs[s] for s in order}
    d_emb = bt.abl_emb - bt.emb
    n_up = sum(len(v) for v in kept.values()) + len(kept_err) + 1

    def row(value: Tensor) -> Tensor:
        out = torch.zeros(n_up, dtype=torch.float64, device=m.device)
        if not value.requires_grad:
            return out
        gs = torch.autograd.grad(value, inputs, retain_graph=True, allow_unused=True)
        j = 0
        for si, s in enumerate(order):
            g = gs[si]
            if kept[s] and g is not None:
                contrib = (g[..., kept[s]] * deltas[s][..., kept[s]]).sum((0, 1))
                out[j : j + len(kept[s])] = contrib.double()
            j += len(kept[s])
        for s in kept_err:
            g = gs[len(order) + order.index(s)]
            if g is not None:
                out[j] = (g * e_deltas[s]).sum()
            j += 1
        if gs[-1] is not None:
            out[j] = (gs[-1] * d_emb).sum()
        return out

    rows = [row((g_a[s][..., i] * live_a[s][..., i]).sum()) for s in order for i in kept[s]]
    rows += [row((g_e[s] * live_e[s]).sum()) for s in kept_err]
    rows.append(row(m))
    return torch.stack(rows)
