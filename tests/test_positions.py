"""Position-aware edges: one edge per (edge, position) or (edge, span), checked against
position-free scores, gradients of a positional mask, HF-hook recomputations and the clean /
corrupted runs."""

from __future__ import annotations

import json
import random

import pytest
import torch

import circuitfind as cf
from circuitfind.circuit import Circuit, graph_from_shape
from circuitfind.errors import InputError
from circuitfind.patching import Ablation, batches, masked_forward
from circuitfind.positions import layout_for
from circuitfind.runs import PreparedRuns
from tests.factories import make_hf_model
from tests.test_patching import _brute_force_gpt2, _random_task

FAMILIES = ["gpt2", "llama-gqa-llama3rope", "gpt_neox-parallel", "olmo2-gqa"]


def _model(name):
    return cf.load(make_hf_model(name))


def _spanned(task):
    """The random task with spans A (position 0), B ([1, 3)) and END (the readout, >= 3);
    the rest is ``other``."""
    n = len(task)
    return task.with_spans(
        A=torch.full((n,), 0),
        B=torch.tensor([[1, 3]] * n),
        END=task.readout,
    )


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("method", ["eap", "eap-ig-inputs"])
def test_eap_summed_over_positions_is_position_free_eap(name, method):
    model = _model(name)
    task = _random_task(n=5, padded=True)
    opts = {"steps": 2} if method != "eap" else {}
    free = cf.score(model, task, method=method, batch_size=3, progress=False, **opts)
    per = cf.score(model, task, method=method, batch_size=3, progress=False, positions=True, **opts)
    spans = cf.score(
        model, _spanned(task), method=method, batch_size=3, progress=False,
        positions=["A", "B", "END"], **opts,
    )  # fmt: skip
    v = free.graph.valid
    assert per.score_matrix.shape == (*v.shape, task.clean.shape[1])
    assert per.positions == tuple(str(i) for i in range(task.clean.shape[1]))
    assert spans.positions == ("A", "B", "END", "other")
    assert free.score_matrix[v].abs().max() > 1e-2
    for c in (per, spans):
        torch.testing.assert_close(
            c.score_matrix.sum(-1)[v], free.score_matrix[v], atol=1e-5, rtol=0
        )
        assert torch.isnan(c.score_matrix[~v]).all()


@pytest.mark.parametrize("name", ["gpt2", "olmo2-gqa"])
def test_positional_eap_is_the_gradient_of_a_positional_float_mask(name):
    """An independent positional EAP: score(s -> r @ c) = -d metric / d mask[s, r, c] at
    mask = 1, through the positional masked run (post-norm families included)."""
    model = _model(name)
    graph = cf.Graph.from_model(model)
    task = _spanned(_random_task(n=4, padded=True))
    layout = layout_for(task, ["A", "B", "END"])
    eap = cf.score(model, task, method="eap", progress=False, positions=["A", "B", "END"])
    abl = Ablation(model, task, "resample")
    P = layout.n_columns
    mask = (graph.valid[..., None].float().expand(-1, -1, P) * (1 - 1e-6)).requires_grad_(True)
    total = 0.0
    for batch in batches(task, 4, model.device):
        cols = layout.batch(batch.idx, batch.clean.shape[1])
        logits = masked_forward(
            model, graph, batch.clean, batch.attention_mask, abl.outputs(batch), mask,
            readout=batch.readout, columns=cols,
        )  # fmt: skip
        total = total + task.metric_fn(logits, batch.idx, reduce="none").sum()
    (grad,) = torch.autograd.grad(total, mask)
    reference = -grad / len(task)
    v = graph.valid[..., None].expand(-1, -1, P)
    scale = float(reference[v].abs().max())
    assert scale > 1e-3
    torch.testing.assert_close(
        eap.score_matrix[v], reference[v], atol=2e-5 * scale + 1e-6, rtol=1e-3
    )


@pytest.mark.parametrize("name", FAMILIES)
def test_every_column_on_is_clean_and_every_column_off_is_corrupted(name):
    model = _model(name)
    graph = cf.Graph.from_model(model)
    task = _spanned(_random_task(n=5, padded=True))
    runs = PreparedRuns(model, task, "resample", batch_size=3)
    runs.layout = layout_for(task, ["A", "B", "END"])
    ev = runs.evaluator()
    full = graph.valid[..., None].float().expand(-1, -1, 4)
    clean = task.metric_fn(task.run(model, "clean"), reduce="none")
    corrupted = task.metric_fn(task.run(model, "corrupted"), reduce="none")
    torch.testing.assert_close(ev.per_prompt(full), clean, atol=1e-4, rtol=0)
    torch.testing.assert_close(ev.per_prompt(torch.zeros_like(full)), corrupted, atol=1e-4, rtol=0)
    # a mask constant over the columns is the position-free mask
    g = torch.Generator().manual_seed(1)
    m = torch.rand(graph.n_senders, graph.n_receivers, generator=g)
    torch.testing.assert_close(
        ev.per_prompt(m[..., None].expand(-1, -1, 4)), ev.per_prompt(m), atol=1e-4, rtol=0
    )


def test_exact_positional_equals_hf_hooks_one_position_at_a_time():
    """score(s -> r @ p) recomputed with plain HF hooks: the receiver loses the sender's
    (clean - corrupted) output at position p only."""
    hf = make_hf_model("gpt2-odd")
    model = cf.load(hf)
    graph = cf.Graph.from_model(model)
    task = _random_task(n=2, T=5)
    circuit = cf.score(model, task, method="exact", positions=True, progress=False)
    with torch.no_grad():
        _, cache = model.run_with_cache(task.clean)
        _, corrupted = model.run_with_cache(task.corrupted)
    clean_out, corr_out = cache.node_outputs(), corrupted.node_outputs()
    clean_metric = task.metric_fn(hf(task.clean).logits.detach())
    rng = random.Random(0)
    edges = [*rng.sample(list(graph.edges.values()), 6), graph.edge("a0.h1->a1.h2<k>")]
    for edge in edges:
        for p in (1, 4):
            only_p = clean_out.clone()
            only_p[:, :, p] = corr_out[:, :, p]
            logits = _brute_force_gpt2(hf, cache, only_p, task.clean, edge)
            expected = float(task.metric_fn(logits) - clean_metric)
            got = circuit.scores[f"{edge.name}@{p}"]
            assert got == pytest.approx(expected, abs=2e-4), (edge.name, p)


@pytest.mark.slow
def test_exact_positional_does_not_depend_on_how_variants_share_a_pass():
    from circuitfind.methods.positional import exact_positional_scores

    model = _model("gpt2-odd")
    task = _spanned(_random_task(n=2, T=6, padded=True))
    runs = PreparedRuns(model, task, "resample", batch_size=2)
    runs.layout = layout_for(task, ["A", "B", "END"])
    one = exact_positional_scores(runs, variants=3)
    many = exact_positional_scores(runs, variants=7)
    v = runs.graph.valid
    torch.testing.assert_close(one[v], many[v], atol=1e-5, rtol=0)
    # summed over columns it is NOT position-free exact (patching is not linear), but each
    # (edge, column) on a last-layer receiver of the logits is: a single term's effect
    free = cf.score(model, task, method="exact", progress=False).score_matrix
    r = runs.graph.receiver_index["logits"]
    torch.testing.assert_close(one[:, r].sum(-1), free[:, r], atol=1e-4, rtol=1e-3)


def test_spans_sum_their_positions_prompt_by_prompt():
    model = _model("gpt2")
    task = _spanned(_random_task(n=2, T=6))
    v = cf.Graph.from_model(model).valid
    for i in range(len(task)):
        one = task[i]
        spans = cf.score(model, one, method="eap", progress=False, positions=["A", "B", "END"])
        per = cf.score(model, one, method="eap", progress=False, positions=True)
        cols = layout_for(one, ["A", "B", "END"]).columns[0]
        for k in range(4):
            expected = per.score_matrix[..., cols == k].sum(-1)
            torch.testing.assert_close(
                spans.score_matrix[..., k][v], expected[v], atol=1e-6, rtol=0
            )


def test_json_round_trip_prune_and_evaluate(tmp_path):
    model = _model("gpt2")
    task = _spanned(_random_task(n=4, padded=True))
    scored = cf.score(model, task, method="eap", progress=False, positions=["A", "B", "END"])
    circuit = cf.prune(scored, top_n=30)
    assert 0 < circuit.n_edges <= 30
    assert all("@" in name for name in circuit.edge_names)
    path = circuit.to_json(tmp_path / "c.json")
    data = json.loads(path.read_text())
    assert data["cfg"]["positions"] == ["A", "B", "END", "other"]
    assert "input->a0.h0<q>@END" in data["edges"]
    back = Circuit.from_json(path)
    assert back.positions == circuit.positions
    assert torch.equal(back.in_graph, circuit.in_graph)
    v = circuit.valid
    torch.testing.assert_close(back.score_matrix[v], circuit.score_matrix[v])
    assert back.scores["L0H0->L1H0<q>@A"] == circuit.scores["a0.h0->a1.h0<q>@A"]
    # evaluate applies the positional mask: the circuit's metric is a masked run's
    ev = cf.evaluate(model, task, back)
    runs = PreparedRuns(model, task, "resample")
    runs.layout = layout_for(task, ["A", "B", "END"])
    direct = runs.evaluator()(back.in_graph.float())
    assert ev.metric_circuit == pytest.approx(direct, abs=1e-5)
    assert ev.n_edges_total == scored.graph.n_edges * 4
    # a file mixing position-free and positional names is refused
    data["edges"]["input->logits"] = {"score": 1.0, "in_graph": True}
    with pytest.raises(InputError, match="column"):
        Circuit.from_dict(data)
    # the position-free view sums the columns
    free = cf.score(model, task, method="eap", progress=False)
    vv = free.graph.valid
    torch.testing.assert_close(
        scored.collapsed().score_matrix[vv], free.score_matrix[vv], atol=1e-5, rtol=0
    )


def test_edge_counts():
    gpt2_small = graph_from_shape(12, 12)
    assert gpt2_small.n_edges == 32_491  # auto-circuit's count with separate q/k/v
    assert gpt2_small.n_edges * 16 == 519_856  # auto-circuit's seq_len=16 edges
    model = _model("gpt2")
    task = _random_task(n=2, T=6)
    c = cf.score(model, task, method="eap", progress=False, positions=True)
    assert len(c.scores) == c.graph.n_edges * 6


def test_methods_without_a_positional_form_and_bad_spans_are_refused():
    model = _model("gpt2")
    task = _random_task(n=2, T=6)
    with pytest.raises(InputError, match="position-aware form"):
        cf.score(model, task, method="node", progress=False, positions=True)
    with pytest.raises(InputError, match="records no span"):
        cf.score(model, task, method="eap", progress=False, positions=["S2"])
    overlap = task.with_spans(X=torch.tensor([[0, 3]] * 2), Y=torch.tensor([2, 2]))
    with pytest.raises(InputError, match="overlap"):
        layout_for(overlap, ["X", "Y"])


def test_builtin_task_spans_point_at_their_tokens():
    ioi = cf.get_task("ioi", cf.load("zoo:ioi"), n=6)
    rows = torch.arange(6)
    s = ioi.spans
    assert torch.equal(ioi.clean[rows, s["IO"]], ioi.answer)
    assert torch.equal(ioi.clean[rows, s["S1"]], ioi.wrong)
    assert torch.equal(ioi.clean[rows, s["S2"]], ioi.wrong)
    assert bool((s["S1"] < s["S2"]).all()) and torch.equal(s["END"], ioi.readout)
    ind = cf.get_task("induction", cf.load("zoo:induction-2l"), n=3, length=5)
    first, repeat = ind.spans["first"][0].tolist(), ind.spans["repeat"][0].tolist()
    assert first[1] - first[0] == 5 and repeat == [first[1], first[1] + 3]
    a = ind.clean[:, first[0] : first[0] + 3]  # the repeat before the query copies A
    assert torch.equal(a, ind.clean[:, repeat[0] : repeat[1]])
    assert torch.equal(ind.spans["END"], ind.readout)
    assert torch.equal(ind.clean[:, -1], ind.clean[:, first[0] + 3])  # the query: A_{L-1}
    gt = cf.get_task("greater-than", cf.load("zoo:greater-than"), n=4)
    yy = gt.spans["YY"]
    assert bool((gt.clean[torch.arange(4), yy] != gt.corrupted[torch.arange(4), yy]).all())
    assert "NOUN" in gt.spans and torch.equal(gt.spans["END"], gt.readout)
    # a sub-task keeps its prompts' spans
    assert torch.equal(ioi[2:4].spans["S2"], s["S2"][2:4])


def test_diagram_lays_out_a_column_per_span_and_discover_takes_positions(tmp_path):
    from circuitfind.render import dot_source, render

    model = _model("gpt2")
    task = _spanned(_random_task(n=4, padded=True))
    circuit = cf.discover(
        model, task, method="eap", top_n=25, positions=["A", "B", "END"], progress=False
    )
    assert circuit.positions == ("A", "B", "END", "other")
    src = dot_source(circuit).source
    used = {name.rsplit("@", 1)[1] for name in circuit.edge_names}
    for col in used:
        k = circuit.positions.index(col)
        assert f"cluster_col{k}" in src and f"label={col}" in src
    assert "rank=same" in src
    some = circuit.edge_names[0]
    sender, rest = some.split("->")
    col = rest.rsplit("@", 1)[1]
    assert f'"{sender}@{col}"' in src or f"{sender}@{col}" in src
    out = render(circuit, tmp_path / "c.gv")
    assert out.exists()


def test_bootstrap_auto_counts_edge_column_terms():
    """--bootstrap auto's size limits count (edge, column) terms: 110 edges x 19 positions =
    2,090 terms is under the attribution limit (10,000) and over the patching one (1,000)."""
    model = cf.load("zoo:induction-2l")
    task = cf.get_task("induction", model, n=8, seed=0)
    c = cf.discover(model, task, method="eap", positions=True, top_n=20, bootstrap="auto")
    assert c.n_edges_total == 2090 and c.meta["stability"]["n_boot"] == 20
    assert set(c.meta["stability"]["core"]) <= set(c.meta["stability"]["frequency"])
    from circuitfind.stability import resolve_bootstrap

    assert resolve_bootstrap("auto", "exact", c.n_edges_total) == 0
