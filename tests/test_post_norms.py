"""Post-norm families (Gemma-2/3, OLMo-2): exact edge scores against a brute-force recomputation
through the Hugging Face modules with plain hooks, where ablating a{L}.h{j} -> r means patching
head j's output inside the sum that layer L's post-norm sees, for receiver r only."""

from __future__ import annotations

import random

import pytest
import torch

import circuitfind as cf
from tests.factories import make_hf_model, method_scores
from tests.test_patching import _random_task


def _record(hf, tokens):
    """Per layer, HF's o_proj input (the heads' z, concatenated) and its output (the post-norm's
    input), the MLP's post-normed output, and the scaled embedding, from plain hooks."""
    layers = hf.model.layers
    rec: dict[str, dict[int, torch.Tensor]] = {"z": {}, "pre": {}, "mlp": {}, "embed": {}}

    def keep_embed(module, args, out):
        rec["embed"][0] = out

    handles = [hf.model.embed_tokens.register_forward_hook(keep_embed)]
    for i, layer in enumerate(layers):

        def keep(module, args, out, i=i):
            rec["z"][i], rec["pre"][i] = args[0], out  # (returns None: the output stays)

        def keep_mlp(module, args, out, i=i):
            rec["mlp"][i] = out

        handles.append(layer.self_attn.o_proj.register_forward_hook(keep))
        handles.append(layer.post_feedforward_layernorm.register_forward_hook(keep_mlp))
    try:
        with torch.no_grad():
            hf(tokens)
    finally:
        for h in handles:
            h.remove()
    return rec


def _brute_force(hf, tokens, clean, corrupted, edge, n_heads, d_head):
    """Logits with ``edge`` ablated through HF's own modules."""
    layers = hf.model.layers
    sender = edge.sender
    with torch.no_grad():
        if sender == "input":
            delta = corrupted["embed"][0] - clean["embed"][0]
        elif sender.startswith("m"):
            L = int(sender[1:])
            delta = corrupted["mlp"][L] - clean["mlp"][L]
        else:  # a head: patch its output inside the sum the layer's post-norm sees
            L, j = (int(x) for x in sender[1:].split(".h"))
            o_proj = layers[L].self_attn.o_proj
            cols = slice(j * d_head, (j + 1) * d_head)
            head_diff = (corrupted["z"][L][..., cols] - clean["z"][L][..., cols]) @ o_proj.weight[
                :, cols
            ].T
            norm = layers[L].post_attention_layernorm
            pre = clean["pre"][L]
            delta = norm(pre + head_diff) - norm(pre)
    handles = []
    receiver = edge.receiver
    if receiver == "logits":
        handles.append(hf.model.norm.register_forward_pre_hook(lambda m, a: (a[0] + delta,)))
    elif receiver.startswith("m"):
        L = int(receiver[1:])
        ln = layers[L].pre_feedforward_layernorm
        handles.append(ln.register_forward_pre_hook(lambda m, a: (a[0] + delta,)))
    else:
        L, h = (int(x) for x in receiver[1:].split(".h"))
        attn, ln = layers[L].self_attn, layers[L].input_layernorm
        stash = {}
        handles.append(ln.register_forward_pre_hook(lambda m, a: stash.update(x=a[0])))
        proj = {"q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj}[edge.qkv]
        group = n_heads // (proj.weight.shape[0] // d_head)
        slot = h if edge.qkv == "q" else h // group
        cols = slice(slot * d_head, (slot + 1) * d_head)
        state = {"busy": False}

        def splice(module, args, out):
            if state["busy"]:
                return out
            state["busy"] = True
            try:
                alt = module(ln(stash["x"] + delta))
            finally:
                state["busy"] = False
            out = out.clone()
            out[..., cols] = alt[..., cols]
            return out

        if edge.qkv != "q" and group > 1:
            pytest.skip("a shared kv head cannot be patched for one query head with HF hooks")
        handles.append(proj.register_forward_hook(splice))
    try:
        with torch.no_grad():
            return hf(tokens).logits
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("name", ["gemma2-softcap-sliding", "gemma3_text"])
def test_exact_edges_equal_brute_force_patches_through_the_post_norm(name):
    hf = make_hf_model(name)
    model = cf.load(hf)
    graph = cf.Graph.from_model(model)
    task = _random_task(n=4)
    scores = method_scores(model, task, "exact", batch_size=4).edges
    clean = _record(hf, task.clean)
    corrupted = _record(hf, task.corrupted)
    clean_metric = task.metric_fn(hf(task.clean).logits.detach())
    H, dh = model.cfg.n_heads, model.cfg.d_head
    edges = [e for e in graph.edges.values() if e.qkv in (None, "q")]
    picks = [
        *random.Random(0).sample(edges, 10),
        graph.edge("a0.h1->a2.h3<q>"),
        graph.edge("a1.h2->m1"),
        graph.edge("a2.h0->logits"),
        graph.edge("m0->a1.h0<q>"),
    ]
    moved = 0
    for edge in picks:
        logits = _brute_force(hf, task.clean, clean, corrupted, edge, H, dh)
        expected = float(task.metric_fn(logits) - clean_metric)
        got = float(scores[edge.sender_index, edge.receiver_index])
        assert got == pytest.approx(expected, abs=2e-4), edge.name
        moved += abs(expected) > 1e-3
    assert moved >= len(picks) // 2  # the patches do move the metric
    # A head's edge is not the head's post-normed share: the norm is over the layer's sum.
    assert model.cfg.post_norms
