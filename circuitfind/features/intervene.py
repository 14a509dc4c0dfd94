"""Checking a graph by intervention: predicted against measured effects of editing features.

The graph predicts the effect on the target of scaling feature ``i``'s activation by ``c``
(``c = 0``: ablation, else steering): ``(c − 1) · T_i``, with ``T`` the total effect of each
node over every path of the linear replacement model, downstream features responding linearly
(``T = (I − M)⁻¹ A`` with ``M`` the adjacency per unit of source activation over feature
sources). It is measured in the real model with the transcoders spliced in (each site's error
from the clean run added back, so the unedited run is the real one), twice: with attention
patterns and norm scales frozen (the graph's own assumptions, the features' nonlinearities back
on), with attention unfrozen (patterns recomputed from the edited stream, norm scales frozen:
what the frozen QK path hides), and fully unfrozen (the whole model recomputed, norms too).
``intervention_check`` reports all three and the Pearson correlation of each with the
prediction, with its sample size and 95% interval; and, to size what the frozen patterns leave
out, a first-order prediction through live attention (``first_order_live``) against the
attention-unfrozen measurement.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from circuitfind.errors import InputError
from circuitfind.features.frozen import frozen_forward, frozen_readout
from circuitfind.features.graph import AttributionGraph
from circuitfind.features.training import spliced_hooks
from circuitfind.model import Model

__all__ = ["intervention_check", "pearson", "predicted_effects"]


def total_effects(graph: AttributionGraph) -> Tensor:
    """[n, n] total effect of each source's whole activation on each target (all paths)."""
    A = graph.adjacency
    n = A.shape[0]
    per_unit = torch.zeros_like(A)
    for i, nd in enumerate(graph.nodes):
        if nd.kind == "feature" and nd.activation != 0:
            per_unit[:, i] = A[:, i] / nd.activation
    eye = torch.eye(n, dtype=A.dtype)
    return torch.linalg.solve(eye - per_unit, A)


def predicted_effects(graph: AttributionGraph, features: list[int], scale: float) -> Tensor:
    """Predicted change of the target for scaling each of ``features`` (node rows) by ``scale``."""
    T = total_effects(graph)
    return (scale - 1.0) * T[graph.logit_index, torch.tensor(features, dtype=torch.long)]


def _target_vector(model: Model, graph: AttributionGraph) -> tuple[Tensor, float]:
    dtype = graph.adjacency.dtype
    t = graph.target
    u = model.w.W_U[:, t["token"]].to(dtype)
    b = 0.0 if model.w.b_U is None else float(model.w.b_U[t["token"]])
    if t["wrong"] is not None:
        u = u - model.w.W_U[:, t["wrong"]].to(dtype)
        b -= 0.0 if model.w.b_U is None else float(model.w.b_U[t["wrong"]])
    return u, b


def _edits(graph: AttributionGraph, features: list[int]) -> list[tuple[str, int, int]]:
    out = []
    for i in features:
        nd = graph.nodes[i]
        if nd.kind != "feature" or nd.site is None or nd.feature is None:
            raise InputError(f"node {nd.id} is not a feature")
        out.append((nd.site, nd.pos, nd.feature))
    return out


def measured_frozen(
    model: Model,
    graph: AttributionGraph,
    features: list[int],
    scale: float,
    live_attention: bool = False,
) -> Tensor:
    """Target change with each feature scaled, attention patterns and norm scales frozen
    (``live_attention``: patterns recomputed, norm scales still frozen)."""
    assert graph.state is not None
    fr, tcs, _ = graph.state
    dtype = graph.adjacency.dtype
    edits = _edits(graph, features)
    B = len(edits) + 1  # the last row is unedited
    errors = {
        s: (fr.site_out[s].to(dtype) - tc(fr.site_in[s].to(dtype))).detach()
        for s, tc in tcs.items()
    }

    def write(site: str, x: Tensor, per_head: Tensor | None) -> Tensor:
        if site in tcs:
            tc = tcs[site]
            acts = tc.encode(x)
            for b, (s, q, f) in enumerate(edits):
                if s == site:
                    acts[b, q, f] = acts[b, q, f] * scale
            return tc.decode(acts, x) + errors[site]
        if site.startswith("a"):
            return x
        return fr.site_out[site].to(dtype).expand_as(x)

    with torch.no_grad():
        emb = fr.embed.to(dtype).expand(B, -1, -1)
        resid = frozen_forward(model, fr, emb, write, affine=True, live_attention=live_attention)
        u, b = _target_vector(model, graph)
        value = frozen_readout(model, fr, resid, True)[:, graph.target["pos"]] @ u + b
    return (value[:-1] - value[-1]).cpu()


def first_order_live(
    model: Model, graph: AttributionGraph, features: list[int], scale: float
) -> Tensor:
    """First-order prediction with attention live (norm scales frozen): ``(c − 1) a_f ·
    ∂target/∂a_f``, the derivative taken through the recomputed patterns too (what the frozen
    graph leaves out: each feature's effect through queries and keys)."""
    assert graph.state is not None
    fr, tcs, _ = graph.state
    dtype = graph.adjacency.dtype
    edits = _edits(graph, features)
    n_pos = fr.embed.shape[0]
    deltas = {
        s: torch.zeros(
            1, n_pos, tc.cfg.d_sae, dtype=dtype, device=fr.embed.device, requires_grad=True
        )
        for s, tc in tcs.items()
    }
    errors = {
        s: (fr.site_out[s].to(dtype) - tc(fr.site_in[s].to(dtype))).detach()
        for s, tc in tcs.items()
    }

    def write(site: str, x: Tensor, per_head: Tensor | None) -> Tensor:
        if site in tcs:
            tc = tcs[site]
            return tc.decode(tc.encode(x) + deltas[site], x) + errors[site]
        if site.startswith("a"):
            return x
        return fr.site_out[site].to(dtype).expand_as(x)

    emb = fr.embed.to(dtype)[None]
    resid = frozen_forward(model, fr, emb, write, affine=True, live_attention=True)
    u, b = _target_vector(model, graph)
    value = frozen_readout(model, fr, resid, True)[0, graph.target["pos"]] @ u + b
    grads = dict(zip(deltas, torch.autograd.grad(value, list(deltas.values())), strict=True))
    acts = torch.tensor([graph.nodes[i].activation for i in features], dtype=dtype)
    g = torch.stack([grads[s][0, q, f] for s, q, f in edits]).cpu()
    return ((scale - 1.0) * acts * g).detach()


def measured_unfrozen(
    model: Model, graph: AttributionGraph, features: list[int], scale: float
) -> Tensor:
    """Target change with each feature scaled in the real model (transcoders spliced in,
    errors from the clean run added back; attention and norms recomputed)."""
    assert graph.state is not None
    fr, tcs, _ = graph.state
    edits = _edits(graph, features)
    B = len(edits) + 1
    errors = {
        s: (fr.site_out[s].double() - tc(fr.site_in[s].double())).float().expand(B, -1, -1)
        for s, tc in tcs.items()
    }
    tcs32 = {s: _to_float(tc) for s, tc in tcs.items()}

    def edit(site: str, acts: Tensor) -> Tensor:
        acts = acts.clone()
        for b, (s, q, f) in enumerate(edits):
            if s == site:
                acts[b, q, f] = acts[b, q, f] * scale
        return acts

    hooks = spliced_hooks(model, tcs32, errors=errors, edit=edit)
    tokens = torch.tensor(graph.tokens, dtype=torch.long)[None].expand(B, -1)
    with torch.no_grad():
        logits = model(tokens, hooks=hooks).double()[:, graph.target["pos"]]
    t = graph.target
    value = logits[:, t["token"]]
    if t["wrong"] is not None:
        value = value - logits[:, t["wrong"]]
    return (value[:-1] - value[-1]).cpu()


def _to_float(tc: Any) -> Any:
    import copy

    return copy.deepcopy(tc).float()


def pearson(x: Tensor, y: Tensor) -> dict[str, Any]:
    """Pearson r of two samples with its size and 95% interval (Fisher z)."""
    from scipy import stats

    a, b = x.double().numpy(), y.double().numpy()
    n = len(a)
    if n < 3 or a.std() == 0 or b.std() == 0:
        return {"r": None, "n": n, "ci95": None, "why": "fewer than 3 points or no variation"}
    res = stats.pearsonr(a, b)
    ci = res.confidence_interval(0.95) if n > 3 else None
    return {
        "r": float(res.statistic),
        "n": n,
        "p": float(res.pvalue),
        "ci95": None if ci is None else [float(ci.low), float(ci.high)],
    }


def intervention_check(
    model: Model,
    graph: AttributionGraph,
    *,
    top: int = 20,
    scale: float = 0.0,
    features: list[int] | None = None,
) -> dict[str, Any]:
    """Predicted vs measured target changes for the ``top`` most influential features (or the
    given node rows), scaled by ``scale`` (0 = ablate), attention frozen and unfrozen."""
    if features is None:
        if graph.pruning is None:
            graph.prune()
        assert graph.pruning is not None
        infl = graph.pruning.influence
        rows = [i for i, nd in enumerate(graph.nodes) if nd.kind == "feature"]
        rows.sort(key=lambda i: -float(infl[i]))
        features = rows[:top]
    if not features:
        raise InputError("the graph has no active features to intervene on")
    pred = predicted_effects(graph, features, scale)
    first = first_order_live(model, graph, features, scale)
    frozen = measured_frozen(model, graph, features, scale)
    live = measured_frozen(model, graph, features, scale, live_attention=True)
    unfrozen = measured_unfrozen(model, graph, features, scale)
    return {
        "scale": scale,
        "features": [graph.nodes[i].id for i in features],
        "predicted": pred.tolist(),
        "measured_frozen": frozen.tolist(),
        "first_order_attention_live": first.tolist(),
        "measured_attention_unfrozen": live.tolist(),
        "measured_unfrozen": unfrozen.tolist(),
        "pearson_frozen": pearson(pred, frozen),
        "pearson_attention_unfrozen": pearson(pred, live),
        "pearson_first_order_vs_attention_unfrozen": pearson(first, live),
        "pearson_unfrozen": pearson(pred, unfrozen),
    }
