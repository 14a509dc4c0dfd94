"""Transcoders and attribution graphs: layout, exactness, references computed independently."""

from __future__ import annotations

import json

import pytest
import torch

import circuitfind as cf
from circuitfind.errors import InputError
from circuitfind.features import (
    TranscoderConfig,
    TranscoderSet,
    attribution_graph,
    replacement_metrics,
    train_transcoders,
)
from circuitfind.features.intervene import measured_frozen, pearson, predicted_effects
from circuitfind.features.prune import compute_influence, find_threshold, normalize, prune_graph
from circuitfind.features.transcoder import Transcoder
from circuitfind.inspect.sae import EvalData
from tests.factories import make_hf_model


def _tcs(model, sites, *, d_sae=32, k=4, skip=False, act="topk", seed=0) -> TranscoderSet:
    """Untrained transcoders with random weights (exactness needs no training)."""
    out = TranscoderSet()
    for i, s in enumerate(sites):
        d = model.cfg.d_model
        cfg = TranscoderConfig(d, d_sae, d, s, activation_fn=act, k=k, skip=skip)
        tc = Transcoder(cfg, seed=seed + i)
        with torch.no_grad():
            tc.W_dec.mul_(3.0)
            tc.b_enc.normal_(0, 0.1)
            tc.b_dec.normal_(0, 0.1)
            if tc.W_skip is not None:
                tc.W_skip.normal_(0, 0.05)
            if tc.threshold is not None:
                tc.threshold.fill_(0.05)
        out[s] = tc.eval()
    return out


@pytest.fixture(scope="module")
def gpt2():
    return cf.load(make_hf_model("gpt2"))


@pytest.fixture(scope="module")
def induction():
    return cf.load("zoo:induction-2l")


# ----------------------------------------------------------------------------- layout
def test_layout_round_trip(tmp_path, gpt2):
    tcs = _tcs(gpt2, ["m0", "a1"], skip=True, act="jumprelu")
    tcs.save(tmp_path)
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "m0" / "weights.safetensors"))
    d = gpt2.cfg.d_model
    assert state["W_enc"].shape == (d, 32) and state["W_dec"].shape == (32, d)
    assert state["W_skip"].shape == (d, d) and state["threshold"].shape == (32,)
    assert state["b_enc"].shape == (32,) and state["b_dec"].shape == (d,)
    cfg = json.loads((tmp_path / "m0" / "cfg.json").read_text())
    assert cfg["hook_name_in"] == "mlp_in.0" and cfg["hook_name_out"] == "mlp_out.0"
    assert cfg["activation_fn"] == "jumprelu" and cfg["layer"] == 0
    back = TranscoderSet.load(tmp_path)
    x = torch.randn(5, d)
    for s in tcs:
        assert torch.allclose(back[s](x), tcs[s](x))
    with pytest.raises(InputError, match="manifest"):
        TranscoderSet.load(tmp_path / "m0")


@pytest.mark.parametrize("act", ["relu", "topk", "jumprelu"])
def test_active_features_equal_preactivations(act):
    cfg = TranscoderConfig(8, 16, 8, "m0", activation_fn=act, k=3)
    tc = Transcoder(cfg).eval()
    with torch.no_grad():
        tc.b_enc.normal_()
    x = torch.randn(20, 8)
    pre, f = tc.preact(x), tc.encode(x)
    on = f != 0
    assert torch.equal(f[on], pre[on])  # what completeness rests on
    if act == "topk":
        assert int(on.sum(-1).max()) <= 3
    if act == "jumprelu":
        assert bool((pre[on] > 0.05).all()) and not bool((pre[~on] > 0.05).any())


# ----------------------------------------------------------------------------- training
def test_train_on_zoo_generator_and_metrics(induction):
    tcs = train_transcoders(induction, sites="auto", steps=20, n=16, d_sae=64, k=4)
    assert sorted(tcs) == ["a0", "a1"]  # MLPs write nothing: attention-output transcoders
    m = tcs["a0"].cfg.metrics
    assert 0 <= m["dead_fraction"] <= 1 and 0 <= m["dense_fraction"] <= 1
    assert abs(m["l0"] - 4.0) < 1e-6
    assert m["replacement"]["kl"] >= 0 and "generator" in m["data"]


def test_replacement_metrics_against_hf_hooks(gpt2):
    """KL and loss of the replacement model against one spliced by plain HF forward hooks."""
    hf = gpt2.hf_model
    tcs = _tcs(gpt2, ["m0", "m2"])
    ids = torch.randint(0, gpt2.cfg.d_vocab, (3, 10), generator=torch.Generator().manual_seed(0))
    got = replacement_metrics(gpt2, tcs, EvalData(ids, None, None, "t"))
    handles = [
        hf.transformer.h[int(s[1:])].mlp.register_forward_hook(
            lambda mod, inp, out, tc=tc: tc(inp[0])
        )
        for s, tc in tcs.items()
    ]
    try:
        with torch.no_grad():
            rep = hf(ids).logits.log_softmax(-1)[:, :-1]
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        orig = hf(ids).logits.log_softmax(-1)[:, :-1]
    kl = (orig.exp() * (orig - rep)).sum(-1).mean()
    loss = -rep.gather(-1, ids[:, 1:, None]).mean()
    assert got["kl"] == pytest.approx(float(kl), rel=1e-4, abs=1e-6)
    assert got["loss_replacement"] == pytest.approx(float(loss), rel=1e-5)


def test_bad_site_is_a_clear_error(gpt2):
    with pytest.raises(InputError, match="unknown site"):
        train_transcoders(gpt2, torch.zeros(2, 4, dtype=torch.long), sites=["m9"], steps=1)


# ----------------------------------------------------------------------------- graphs
@pytest.mark.parametrize(
    "family, sites, skip",
    [
        ("gpt2", ["m0", "m1", "m2"], True),
        ("gpt2", ["a0", "m1"], False),
        ("llama-gqa-llama3rope", ["m0", "m2"], False),
        ("gpt_neox-parallel", ["m0", "m1", "m2"], True),
    ],
)
def test_completeness(family, sites, skip):
    """Every feature's activation and the logit equal their incoming edges plus bias."""
    model = cf.load(make_hf_model(family))
    tcs = _tcs(model, sites, skip=skip)
    ids = torch.randint(0, model.cfg.d_vocab, (9,), generator=torch.Generator().manual_seed(1))
    g = attribution_graph(model, tcs, ids, wrong=3)
    assert g.meta["n_features"] > 0
    gap = g.completeness()
    assert float(gap.max()) < 1e-4
    logit = model(ids[None])[0, -1]
    assert g.target["value"] == pytest.approx(float(logit[g.target["token"]] - logit[3]), abs=1e-5)


def test_edges_against_hf_closed_form(induction):
    """tok@s -> a0 feature@t equals Σ_h A_h[t,s] · LN(emb_s) W_V^h W_O^h · W_enc[:, f] computed
    from the HF module's weights and attentions, head by head; and a1 feature -> logit equals
    its decoder write through the frozen final LayerNorm."""
    tcs = _tcs(induction, ["a0", "a1"], d_sae=48, k=6)
    ids = torch.tensor([5, 9, 3, 7, 1, 5, 9, 3])
    g = attribution_graph(induction, tcs, ids)
    hf = induction.hf_model
    with torch.no_grad():
        out = hf(ids[None], output_attentions=True, output_hidden_states=True)
    blk = hf.transformer.h[0]
    emb = out.hidden_states[0][0].double()
    ln = blk.ln_1
    norm = (emb - emb.mean(-1, keepdim=True)) / torch.sqrt(emb.var(-1, unbiased=False,
            keepdim=True) + ln.eps) * ln.weight.double()  # fmt: skip
    W = blk.attn.c_attn.weight.double()  # [d, 3d] (Conv1D)
    d, H = induction.cfg.d_model, induction.cfg.n_heads
    dh = d // H
    W_V = W[:, 2 * d :].reshape(d, H, dh)
    W_O = blk.attn.c_proj.weight.double().reshape(H, dh, d)
    A = out.attentions[0][0].double()  # [head, q, k]
    checked = 0
    for i, nd in enumerate(g.nodes):
        if nd.kind != "feature" or nd.site != "a0" or nd.pos < 3:
            continue
        enc = tcs["a0"].W_enc[:, nd.feature].double()
        for s in range(nd.pos + 1):
            per_head = torch.stack(
                [A[h, nd.pos, s] * (norm[s] @ W_V[:, h] @ W_O[h]) @ enc for h in range(H)]
            )
            j = g.index(f"tok@{s}")
            assert float(g.adjacency[i, j]) == pytest.approx(float(per_head.sum()), abs=1e-4)
            assert torch.allclose(g.heads_of(i, j), per_head, atol=1e-4)
        checked += 1
        if checked == 3:
            break
    assert checked == 3
    # a1 feature at the last position -> logit, through the final LayerNorm at its real scale
    seen = []
    hook = hf.transformer.ln_f.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        hf(ids[None])
    hook.remove()
    last = seen[0][0, -1].double()
    inv = 1.0 / torch.sqrt(last.var(unbiased=False) + hf.transformer.ln_f.eps)
    u = hf.lm_head.weight[g.target["token"]].double()
    for i, nd in enumerate(g.nodes):
        if nd.kind == "feature" and nd.site == "a1" and nd.pos == len(ids) - 1:
            v = nd.activation * tcs["a1"].W_dec[nd.feature].double()
            want = ((v - v.mean()) * inv * hf.transformer.ln_f.weight.double()) @ u
            assert float(g.adjacency[g.logit_index, i]) == pytest.approx(float(want), abs=1e-5)


def test_pruning_definitions():
    """Influence is w(Â + Â² + ...) = w((I − Â)⁻¹ − I); thresholds keep cumulative shares."""
    A = torch.zeros(6, 6, dtype=torch.float64)
    # order: features 0, 1; errors 2; tokens 3, 4; logit 5
    A[5, 0], A[5, 1], A[5, 2] = 3.0, -1.0, 0.5
    A[0, 3], A[0, 1], A[1, 4] = 2.0, 1.0, -4.0
    w = torch.zeros(6, dtype=torch.float64)
    w[5] = 1.0
    N = normalize(A)
    want = w @ (torch.linalg.inv(torch.eye(6, dtype=torch.float64) - N) - torch.eye(6))
    assert torch.allclose(compute_influence(N, w), want)
    assert float(find_threshold(torch.tensor([4.0, 3.0, 2.0, 1.0]), 0.65)) == 3.0
    # influences by hand: f0 2/3, f1 1/9 + 2/3 * 1/3 = 4/9 (directly and through f0), error
    # 1/9, each token 4/9; sorted shares of the total 19/9: 0.316, then 0.526 >= 0.5 at 4/9
    assert torch.allclose(want[:5], torch.tensor([6, 4, 1, 4, 4], dtype=torch.float64) / 9)
    res = prune_graph(A, 2, 2, 1, node_threshold=0.5, edge_threshold=1.0)
    assert bool(res.node_mask[3:].all())  # tokens and the logit always stay
    assert res.node_mask.tolist()[:3] == [True, True, False]
    res = prune_graph(A, 2, 2, 1, node_threshold=0.3, edge_threshold=1.0)
    assert res.node_mask.tolist()[:3] == [True, False, False]
    with pytest.raises(InputError):
        prune_graph(A, 2, 2, 1, node_threshold=1.5)


def test_graph_dict_and_neuronpedia(gpt2, tmp_path):
    from circuitfind.features.export import write_neuronpedia

    tcs = _tcs(gpt2, ["m0", "m1", "m2"])
    g = attribution_graph(gpt2, tcs, torch.arange(8), node_threshold=0.9)
    d = g.to_dict()
    ids = {n["id"] for n in d["nodes"]}
    assert all(e["source"] in ids and e["target"] in ids for e in d["edges"])
    path = write_neuronpedia(g, tmp_path / "np.json", slug="t")
    np_graph = json.loads(path.read_text())
    assert set(np_graph) == {"metadata", "qParams", "nodes", "links"}
    assert np_graph["metadata"]["slug"] == "t" and len(np_graph["metadata"]["prompt_tokens"]) == 8
    kinds = {n["feature_type"] for n in np_graph["nodes"]}
    assert {"embedding", "logit"} <= kinds
    for n in np_graph["nodes"]:
        assert {"node_id", "feature", "layer", "ctx_idx", "influence"} <= set(n)
        if n["feature_type"] == "embedding":
            assert n["node_id"].startswith("E_") and n["layer"] == "E"
        if n["feature_type"] == "logit":
            assert n["is_target_logit"] and n["layer"] == str(gpt2.cfg.n_layers + 1)
    node_ids = {n["node_id"] for n in np_graph["nodes"]}
    assert all(link["source"] in node_ids and link["target"] in node_ids for link in
               np_graph["links"])  # fmt: skip
    assert len(node_ids) == len(np_graph["nodes"])


# ----------------------------------------------------------------------------- QK, interventions
@pytest.mark.parametrize("family", ["zoo", "llama-gqa-llama3rope"])
def test_attention_drivers_reproduce_the_pattern(family, induction):
    """softmax over keys of the exact pairwise score split equals HF's attention row."""
    from circuitfind.features.qk import attention_drivers

    model = induction if family == "zoo" else cf.load(make_hf_model(family))
    sites = ["a0"] if family == "zoo" else ["m0"]
    tcs = _tcs(model, sites, d_sae=48, k=6)
    ids = torch.tensor([5, 9, 3, 5, 9, 3])
    g = attribution_graph(model, tcs, ids, node_threshold=None)
    with torch.no_grad():
        att = model.hf_model(ids[None], output_attentions=True).attentions[1][0, 1, 5]
    scores = torch.tensor(
        [attention_drivers(model, g, 1, 1, 5, s)["score"] for s in range(6)], dtype=torch.float64
    )
    assert torch.allclose(scores.softmax(0), att.double(), atol=1e-5)


def test_intervention_exact_where_linear(gpt2):
    """Features of the last site reach the logit only through the frozen final norm: the
    graph's prediction is exact there, and scaling by 1 changes nothing."""
    tcs = _tcs(gpt2, ["m2"])
    g = attribution_graph(gpt2, tcs, torch.arange(7), node_threshold=None)
    feats = [i for i, n in enumerate(g.nodes) if n.kind == "feature" and n.pos == 6][:4]
    assert len(feats) == 4
    for scale in (0.0, 2.5):
        pred = predicted_effects(g, feats, scale)
        meas = measured_frozen(gpt2, g, feats, scale)
        assert torch.allclose(pred, meas, atol=1e-6)
    assert float(measured_frozen(gpt2, g, feats, 1.0).abs().max()) < 1e-9
    x, y = torch.randn(10), torch.randn(10)
    r = pearson(x, y)
    assert r["r"] == pytest.approx(float(torch.corrcoef(torch.stack([x, y]))[0, 1]), abs=1e-6)
    assert r["n"] == 10 and r["ci95"][0] < r["r"] < r["ci95"][1]


def test_dataset_circuit_bounds(induction):
    """All nodes kept: faithfulness 1; none kept: 0 (by construction of the ablations)."""
    from circuitfind.features.dataset import feature_circuit

    tcs = _tcs(induction, ["a0", "a1"], d_sae=32, k=4)
    task = cf.get_task("induction", induction, n=8, seed=0)
    everything = 2 * 32 + 2
    full = feature_circuit(induction, tcs, task, top_n=everything, n_boot=50)
    assert full.faithfulness.value == pytest.approx(1.0, abs=1e-5)
    none = feature_circuit(induction, tcs, task, threshold=1e9, n_boot=50)
    assert none.n_nodes == 0 and none.faithfulness.value == pytest.approx(0.0, abs=1e-5)
    assert json.dumps(full.to_dict())


def test_cli_features_graph(tmp_path, induction, capsys):
    from circuitfind.cli import main

    _tcs(induction, ["a0", "a1"], d_sae=32, k=4).save(tmp_path / "tc")
    rc = main(
        [
            "features", "graph", "--model", "zoo:induction-2l", "--transcoders",
            str(tmp_path / "tc"), "--tokens", "5,9,3,7,5,9", "--check", "4",
            "--out", str(tmp_path / "g.json"), "--neuronpedia", str(tmp_path / "np.json"),
            "--examples", "2",
        ]
    )  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "completeness error" in text and "top path" in text
    assert json.loads((tmp_path / "g.json").read_text())["intervention"]["pearson_frozen"]["n"] == 4


def test_top_examples_match_the_model(induction):
    from circuitfind.features.examples import top_examples

    tcs = _tcs(induction, ["a1"], d_sae=16, k=4)
    ids = torch.randint(0, 128, (6, 12), generator=torch.Generator().manual_seed(3))
    ex = top_examples(induction, tcs, ids, k=3)
    with torch.no_grad():
        cache = induction.cache(ids)
    attn = cache.heads[1].sum(2) + induction.attn_bias(1)
    acts = tcs["a1"].encode(attn)  # [6, 12, 16]
    assert ex["a1"]
    for f, rows in ex["a1"].items():
        assert rows[0]["activation"] == pytest.approx(float(acts[..., f].max()), rel=1e-5)
        for r in rows:
            assert r["activation"] == pytest.approx(float(acts[r["row"], r["pos"], f]), rel=1e-5)
            assert r["token"] == f"t{int(ids[r['row'], r['pos']])}"


def test_mlp_transcoders_on_zoo_ioi():
    """MLP transcoders trained on zoo:ioi's own generator (Llama: RMSNorm, rotary, GQA, gated
    MLP) in a few steps; the graph of an IOI prompt adds up to the logit difference."""
    model = cf.load("zoo:ioi")
    tcs = train_transcoders(model, sites="auto", steps=30, n=16, d_sae=128, k=8)
    assert sorted(tcs) == ["m0", "m1", "m2"]
    rep = tcs["m0"].cfg.metrics["replacement"]
    assert rep["kl"] >= 0 and rep["loss_replacement"] > 0
    task = cf.get_task("ioi", model, n=2, seed=0)
    g = attribution_graph(model, tcs, task.clean[0], target=int(task.answer[0]),
                          wrong=int(task.wrong[0]), pos=int(task.readout[0]))  # fmt: skip
    assert float(g.completeness().max()) < 1e-4
    logits = model(task.clean[:1])[0, int(task.readout[0])]
    diff = logits[int(task.answer[0])] - logits[int(task.wrong[0])]
    assert g.target["value"] == pytest.approx(float(diff), abs=1e-4)


def test_dataset_ie_is_the_total_derivative(induction):
    """With zero ablation a feature's IE is −Σ_pos a · ∂m/∂a (total derivative, downstream
    features recomputed): equal to a finite difference of the spliced model's metric."""
    from circuitfind.features.dataset import feature_circuit
    from circuitfind.features.training import spliced_hooks

    tcs = _tcs(induction, ["a0", "a1"], d_sae=32, k=4)
    task = cf.get_task("induction", induction, n=4, seed=1)
    fc = feature_circuit(induction, tcs, task, ablation="zero", top_n=3, n_boot=20)
    site, f = "a0", int(fc.scores["a0"].abs().argmax())
    eps = 0.05  # central difference: O(eps^2) error, far above float32 rounding

    def metric(scale: float) -> float:
        # errors from the clean run keep the spliced model equal to the real one
        reads = {}
        grab = {f"attn_out.{i}": (lambda y, i=i: reads.setdefault(i, y)) for i in (0, 1)}
        with torch.no_grad():
            induction(task.clean, hooks=grab)
        errs = {f"a{i}": reads[i] - tcs[f"a{i}"](reads[i]) for i in (0, 1)}

        def edit(s, a):
            if s == site:
                a = a.clone()
                a[..., f] *= scale
            return a

        hooks = spliced_hooks(induction, tcs, errors=errs, edit=edit)
        with torch.no_grad():
            return float(task.metric_fn(induction(task.clean, hooks=hooks)))

    fd = (metric(1 - eps) - metric(1 + eps)) / (2 * eps)  # d m / d(−scale) at scale 1
    assert float(fc.scores[site][f]) == pytest.approx(fd, rel=2e-2, abs=1e-5)


def test_jumprelu_threshold_learns():
    """The straight-through estimator moves the thresholds: a larger L0 penalty, fewer features."""
    from circuitfind.features.training import _train_one

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=gen)
    y = x @ torch.randn(8, 8, generator=gen)
    l0 = []
    for coef in (0.0, 0.05):
        cfg = TranscoderConfig(8, 32, 8, "m0", activation_fn="jumprelu", l0_coefficient=coef)
        tc = _train_one(x, y, cfg, steps=80, batch_size=128, lr=1e-2, seed=0)
        assert not torch.allclose(tc.threshold, torch.full((32,), cfg.init_threshold))
        with torch.no_grad():
            l0.append(float((tc.encode(x) > 0).float().sum(-1).mean()))
    assert l0[1] < l0[0]


def test_wrong_width_is_a_clear_error(gpt2, induction):
    with pytest.raises(InputError, match="width 48"):
        attribution_graph(induction, _tcs(gpt2, ["a0"]), torch.arange(5))


def test_cli_features_train_and_circuit(tmp_path, capsys):
    from circuitfind.cli import main

    out = tmp_path / "tc"
    args = ["features", "train", "--model", "zoo:induction-2l", "--out", str(out)]
    assert main([*args, "--steps", "5", "--n", "8", "--d-sae", "32", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert sorted(metrics) == ["a0", "a1"] and "kl" in metrics["a0"]["replacement"]
    assert (out / "manifest.json").is_file() and (out / "a1" / "weights.safetensors").is_file()
    rc = main(
        ["features", "circuit", "--model", "zoo:induction-2l", "--transcoders", str(out),
         "--task", "induction", "--n", "4", "--top-n", "5", "--json"]
    )  # fmt: skip
    assert rc == 0
    fc = json.loads(capsys.readouterr().out)
    assert fc["n_nodes"] == 5 and fc["faithfulness"]["value"] is not None
    assert fc["edges"] and {"from", "to", "ie"} == set(fc["edges"][0])
    names = {n["node"] for n in fc["nodes"]} | {"embed", "metric"}
    assert all(e["from"] in names and e["to"] in names for e in fc["edges"])
    rc = main(
        ["features", "circuit", "--model", "zoo:induction-2l", "--transcoders", str(out),
         "--task", "induction", "--n", "4", "--top-n", "5", "--no-edges"]
    )  # fmt: skip
    assert rc == 0 and "edges" not in capsys.readouterr().out
