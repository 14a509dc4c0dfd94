"""Edges of dataset-level feature circuits (Marks et al.) against an independent reference.

The reference is a *substitution* model written here from scratch: every site's output is
rebuilt from constant (clean) feature activations and errors, except the one upstream node
moved along its ablation direction by a scalar ``eps``; the edge is ``d/d eps`` of
``Σ g_d · d`` at ``eps = 0``, with ``g_d`` the metric's total derivative w.r.t. the downstream
node (also recomputed here). The engine instead detaches every node and re-enters it through a
leaf, one backward per downstream node: the two must agree edge by edge.
"""

from __future__ import annotations

import json

import pytest
import torch

import circuitfind as cf
from circuitfind.features.dataset import feature_circuit
from tests.factories import make_hf_model
from tests.test_features import _tcs


def _clean_values(model, tcs, tokens, mask):
    """Each site's input x, real output y, features and error; and the embeddings (no grad)."""
    reads = {}
    hooks = {"embed": lambda e: reads.setdefault("embed", e)}
    for s in tcs:
        layer = int(s[1:])
        if s.startswith("a"):
            hooks[f"attn_out.{layer}"] = lambda y, s=s: reads.setdefault(s, (y, y))[1]
        else:
            lw = model.w.layers[layer]
            point = f"resid_pre.{layer}" if model.cfg.parallel_attn_mlp else f"resid_mid.{layer}"

            def grab_x(x, s=s, lw=lw):
                reads[s + ":x"] = model.norm(x, lw.ln2_w, lw.ln2_b, lw.ln2_eps)
                return x

            hooks[point] = grab_x
            hooks[f"mlp_out.{layer}"] = lambda y, s=s: reads.setdefault(s, (reads[s + ":x"], y))[1]
    with torch.no_grad():
        model(tokens, mask, hooks=hooks)
    out = {}
    for s, tc in tcs.items():
        x, y = reads[s]
        out[s] = {"x": x, "y": y, "a": tc.encode(x), "e": y - tc(x)}
    return out, reads["embed"]


def _substituted(model, tcs, tokens, mask, consts, embed, *, move=None, offset=None):
    """Logits and each site's live (x, y) with every site's output = decode(A_s, x_s) + E_s
    from constants; ``move = (node, tensor)`` adds ``tensor`` to one node's constant (a site's
    activations ``(s, 'a')``, its error ``(s, 'e')`` or ``('embed', None)``). ``offset[s]``
    instead recomputes site s's features live and adds to them (the total-derivative run)."""
    live = {}
    hooks = {}
    if move is not None and move[0] == ("embed", None):
        hooks["embed"] = lambda e: embed + move[1]
    for s, tc in tcs.items():
        layer = int(s[1:])
        lw = model.w.layers[layer]

        def out_fn(y, s=s, tc=tc, lw=lw, layer=layer):
            x = y if s.startswith("a") else model.norm(live[s + ":resid"], lw.ln2_w, lw.ln2_b,
                                                       lw.ln2_eps)  # fmt: skip
            live[s] = (x, y)
            if offset is not None:
                a = tc.encode(x) + offset[s]
                e = consts[s]["e"]
            else:
                a = consts[s]["a"] + (move[1] if move and move[0] == (s, "a") else 0)
                e = consts[s]["e"] + (move[1] if move and move[0] == (s, "e") else 0)
            return tc.decode(a, x) + e

        if s.startswith("m"):
            point = f"resid_pre.{layer}" if model.cfg.parallel_attn_mlp else f"resid_mid.{layer}"
            hooks[point] = lambda r, s=s: live.__setitem__(s + ":resid", r) or r
            hooks[f"mlp_out.{layer}"] = out_fn
        else:
            hooks[f"attn_out.{layer}"] = out_fn
    return model(tokens, mask, hooks=hooks), live


def _reference_edge(model, tcs, task, up, down, ablation_values):
    """Σ over prompts of g_d · d(eps)' at eps = 0, for one upstream and downstream node name."""
    total = 0.0
    tokens, mask = task.clean, task.attention_mask
    idx = torch.arange(len(task))
    consts, embed = _clean_values(model, tcs, tokens, mask)
    abl, abl_embed = ablation_values(tokens, mask, consts, embed)

    # g_d: the metric's total derivative w.r.t. the downstream node
    site_d, _, kind_d = down.partition(".")
    if down != "metric":
        offset = {s: torch.zeros_like(c["a"]) for s, c in consts.items()}
        e_leaf = {s: c["e"].clone().requires_grad_(True) for s, c in consts.items()}
        offset[site_d].requires_grad_(True)
        consts_g = {s: {**c, "e": e_leaf[s]} for s, c in consts.items()}
        logits, _ = _substituted(model, tcs, tokens, mask, consts_g, embed, offset=offset)
        m = task.metric_fn(logits, idx, reduce="none").sum()
        wrt = e_leaf[site_d] if kind_d == "err" else offset[site_d]
        g = torch.autograd.grad(m, wrt)[0]

    # the upstream node moved by eps along its ablation direction
    eps = torch.zeros((), requires_grad=True)
    if up == "embed":
        node, delta = ("embed", None), abl_embed - embed
    else:
        site_u, _, kind_u = up.partition(".")
        if kind_u == "err":
            node, delta = (site_u, "e"), abl[site_u]["e"] - consts[site_u]["e"]
        else:
            i = int(kind_u[1:])
            delta = torch.zeros_like(consts[site_u]["a"])
            delta[..., i] = abl[site_u]["a"][..., i] - consts[site_u]["a"][..., i]
            node = (site_u, "a")
    logits, live = _substituted(model, tcs, tokens, mask, consts, embed, move=(node, eps * delta))
    if down == "metric":
        value = task.metric_fn(logits, idx, reduce="none").sum()
    else:
        x, y = live[site_d]
        tc = tcs[site_d]
        if kind_d == "err":
            value = (g * (y - tc(x))).sum()
        else:
            j = int(kind_d[1:])
            value = (g[..., j] * tc.encode(x)[..., j]).sum()
    if not value.requires_grad:
        return 0.0
    (d_eps,) = torch.autograd.grad(value, eps, allow_unused=True)
    total = 0.0 if d_eps is None else float(d_eps)
    return total / len(task)


def _corrupted_values(model, tcs, task):
    def values(tokens, mask, consts, embed):
        return _clean_values(model, tcs, task.corrupted, mask)

    return values


def _check_edges(model, tcs, task, fc, values, *, rtol=2e-3):
    """Every edge type present in ``fc`` against the reference; also non-edges are zero."""
    edges = {(u, v): w for u, v, w in fc.edges}
    assert edges, "the circuit has no edges"
    names = [*fc.nodes, "embed"]
    picks = sorted(edges, key=lambda k: -abs(edges[k]))[:6]
    kinds = {}  # one edge of each (upstream kind, downstream kind)
    for u, v in edges:
        key = (u.split(".")[-1][0], v.split(".")[-1][0] if v != "metric" else "m")
        kinds.setdefault(key, (u, v))
    picks += list(kinds.values())
    scale = max(abs(w) for w in edges.values())
    for u, v in dict.fromkeys(picks):
        ref = _reference_edge(model, tcs, task, u, v, values)
        assert edges[(u, v)] == pytest.approx(ref, rel=rtol, abs=1e-5 * scale), (u, v)
    # an upstream node at the same or a later site (or the parallel branch) has no edge
    for u in names:
        for v in fc.nodes:
            if u == "embed":
                continue
            su, sv = u.split(".")[0], v.split(".")[0]
            lu, lv = int(su[1:]), int(sv[1:])
            parallel = model.cfg.parallel_attn_mlp
            if lu > lv or su == sv or (lu == lv and (su[0] == "m" or parallel)):
                assert (u, v) not in edges, (u, v)
    return edges


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox-parallel", "llama-gqa-llama3rope"])
def test_edges_equal_the_substitution_reference(family, one_thread):
    """Random models of three families (LayerNorm, parallel attention + MLP, RMSNorm + GQA),
    attention and MLP sites with skip transcoders, corrupted ablation, several batches."""
    model = cf.load(make_hf_model(family))
    sites = ["a0", "m0", "a1", "m1"]
    tcs = _tcs(model, sites, d_sae=24, k=4, skip=True)
    task = cf.get_task("induction", model, n=5, seed=2)
    fc = feature_circuit(model, tcs, task, top_n=14, batch_size=2, n_boot=20)
    edges = _check_edges(model, tcs, task, fc, _corrupted_values(model, tcs, task))
    assert any(v == "metric" for _, v in edges) and any(u == "embed" for u, _ in edges)
    assert any(u.split(".")[0] != v.split(".")[0] and v != "metric" and u != "embed"
               for u, v in edges)  # fmt: skip
    d = fc.to_dict()
    assert json.dumps(d) and len(d["edges"]) == len(fc.edges)
    g = fc.to_networkx()
    assert g.number_of_edges() == len(fc.edges)
    assert set(g.nodes) >= set(fc.nodes)


def test_edges_with_mlp_sites_only_go_through_attention(induction_model, one_thread):
    """With MLP transcoders only, attention layers are paths, not nodes: m0 → m1 edges pass
    through layer 1's attention (and the residual stream), as the reference computes them."""
    tcs = _tcs(induction_model, ["m0", "m1"], d_sae=24, k=4, act="relu")
    task = cf.get_task("induction", induction_model, n=4, seed=5)
    fc = feature_circuit(induction_model, tcs, task, top_n=10, batch_size=4, n_boot=20)
    _check_edges(induction_model, tcs, task, fc, _corrupted_values(induction_model, tcs, task))


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_edges_under_zero_and_mean_ablation(induction_model, ablation, one_thread):
    tcs = _tcs(induction_model, ["a0", "a1"], d_sae=24, k=4)
    task = cf.get_task("induction", induction_model, n=4, seed=7)
    fc = feature_circuit(induction_model, tcs, task, ablation=ablation, top_n=8, batch_size=4,
                         n_boot=20)  # fmt: skip

    def values(tokens, mask, consts, embed):
        if ablation == "zero":
            return {s: {k: torch.zeros_like(v) for k, v in c.items()} for s, c in consts.items()}, (
                torch.zeros_like(embed)
            )
        mean = {s: {"a": c["a"].mean(0, keepdim=True).expand_as(c["a"]), "e": c["e"]}
                for s, c in consts.items()}  # fmt: skip
        return mean, embed.mean(0, keepdim=True).expand_as(embed)

    edges = _check_edges(induction_model, tcs, task, fc, values)
    if ablation == "mean":  # errors and (for equal-position prompts) nothing else are moved
        assert all(not u.endswith(".err") for u, _ in edges)


def test_edge_threshold_and_no_edges(induction_model, one_thread):
    tcs = _tcs(induction_model, ["a0", "a1"], d_sae=24, k=4)
    task = cf.get_task("induction", induction_model, n=4, seed=1)
    full = feature_circuit(induction_model, tcs, task, top_n=8, n_boot=20)
    cut = sorted(abs(w) for *_, w in full.edges)[len(full.edges) // 2]
    half = feature_circuit(induction_model, tcs, task, top_n=8, n_boot=20, edge_threshold=cut)
    assert {(u, v) for u, v, w in half.edges} == {(u, v) for u, v, w in full.edges if abs(w) > cut}
    none = feature_circuit(induction_model, tcs, task, top_n=8, n_boot=20, edges=False)
    assert none.edges is None and none.to_dict()["edges"] is None
    assert none.faithfulness.value == pytest.approx(full.faithfulness.value, abs=1e-9)


@pytest.fixture(scope="module")
def induction_model():
    return cf.load("zoo:induction-2l")


def test_draw_feature_circuit(tmp_path, induction_model, one_thread):
    import shutil

    from circuitfind.errors import InputError
    from circuitfind.features.draw import draw_feature_circuit, feature_circuit_dot

    tcs = _tcs(induction_model, ["a0", "a1"], d_sae=24, k=4)
    task = cf.get_task("induction", induction_model, n=4, seed=1)
    fc = feature_circuit(induction_model, tcs, task, top_n=8, n_boot=20)
    src = feature_circuit_dot(fc, max_edges=None).source
    for u, v, _ in fc.edges:
        assert f'"{u}" -> "{v}"' in src or f"{u} -> {v}" in src
    few = feature_circuit_dot(fc, max_edges=3).source
    assert few.count("tooltip") == 3 and few.count("->") == 6  # each edge and its tooltip
    assert f"{len(fc.edges) - 3} left out" in few
    gv = draw_feature_circuit(fc, tmp_path / "fc.gv")
    assert gv.read_text() == feature_circuit_dot(fc).source
    if shutil.which("dot"):
        svg = draw_feature_circuit(fc, tmp_path / "fc.svg")
        assert svg.read_text().lstrip().startswith(("<?xml", "<svg"))
    nodes_only = feature_circuit(induction_model, tcs, task, top_n=8, n_boot=20, edges=False)
    with pytest.raises(InputError, match="edges=True"):
        feature_circuit_dot(nodes_only)
