"""Position-aware learned masks (edge-pruning, ugs over (edge, column) terms): recovery of a
planted circuit whose signal runs through known columns, the positional masked run at its
ends against HF's clean and corrupted runs, seeds, resuming, warm starts, the memory plan and
discover end to end."""

from __future__ import annotations

import json
import logging
import os
import random
import signal

import pytest
import torch
from scipy.stats import rankdata

import circuitfind as cf
from circuitfind.bench import planted
from circuitfind.checkpoint import Interrupted
from circuitfind.circuit import Circuit
from circuitfind.evaluation import roc_auc
from circuitfind.methods import masks, method_spec
from circuitfind.patching import masked_forward
from circuitfind.positions import layout_for
from circuitfind.pruning_positions import valid_like
from circuitfind.runs import PreparedRuns
from circuitfind.tasks import Task
from tests.factories import make_hf_model
from tests.test_patching import _random_task

METHODS = ("edge-pruning", "ugs")
STEPS = 40  # as the position-free tests: about 1.5 s a run on the planted model
SPANS = ["PREV", "MATCH", "END"]

# Where each planted edge carries the signal when the corrupted segment shares no token with
# the clean one (read off the planted weights, not off any method): at the readout (END, the
# last position) the induction head's query reads the current token A_7 and the logits read
# the head; the head attends to the position after A_7's first occurrence (MATCH, position
# SEGMENT - 1), whose key is the previous-token head's copy of A_7 and whose value is the
# answer; that copy is the previous-token head's value at the position before (PREV).
PLANTED_COLUMNS = {
    "input->a0.h0<v>": "PREV",
    "a0.h0->a1.h0<k>": "MATCH",
    "input->a1.h0<v>": "MATCH",
    "input->a1.h0<q>": "END",
    "a1.h0->logits": "END",
}
POSITION_OF = {
    "PREV": planted.SEGMENT - 2,
    "MATCH": planted.SEGMENT - 1,
    "END": 2 * planted.SEGMENT - 2,
}

pytestmark = pytest.mark.usefixtures("one_thread")


def disjoint_task(n: int = 8, seed: int = 0) -> Task:
    """The planted induction task with a corrupted segment disjoint from the clean one (the
    vocabulary's other half), so no corrupted key matches the query by chance: every other
    (edge, column) term has no effect. Spans PREV, MATCH and END as in PLANTED_COLUMNS."""
    rng = random.Random(seed)
    V, K = planted.VOCAB, planted.SEGMENT
    clean, corrupted, answer, wrong = [], [], [], []
    for _ in range(n):
        a = rng.sample(range(V), K)
        b = [t for t in range(V) if t not in a]
        rng.shuffle(b)
        clean.append(a + a[:-1])
        corrupted.append(b + b[:-1])
        answer.append(a[-1])
        wrong.append(b[-1])
    task = Task.from_tokens(clean, corrupted, answer, wrong, metric="logit_diff", name="disjoint")
    return task.with_spans(**{k: torch.full((n,), p) for k, p in POSITION_OF.items()})


def reference(graph: cf.Graph, layout) -> torch.Tensor:
    """[S, R, P] bool: the planted (edge, column) terms."""
    out = torch.zeros(graph.n_senders, graph.n_receivers, layout.n_columns, dtype=torch.bool)
    for name, span in PLANTED_COLUMNS.items():
        e = graph.edges[name]
        col = span if layout.kind == "spans" else str(POSITION_OF[span])
        out[e.sender_index, e.receiver_index, layout.names.index(col)] = True
    return out


def prepared(model, task, positions, batch_size=32, checkpoint_dir=None) -> PreparedRuns:
    runs = PreparedRuns(model, task, "resample", batch_size=batch_size)
    runs.layout = layout_for(task, positions)
    runs.checkpoint_dir = checkpoint_dir
    return runs


def positional_scores(model, task, method, positions=SPANS, checkpoint_dir=None, **options):
    runs = prepared(model, task, positions, checkpoint_dir=checkpoint_dir)
    return method_spec(method).function()(runs, **options)


@pytest.fixture(scope="module")
def setup():
    model = cf.load(planted.planted_model(0))
    task = disjoint_task()
    return model, task, cf.Graph.from_model(model)


# ---------------------------------------------------------------------------- the reference
def test_the_reference_is_every_term_exact_patching_sees(setup):
    """Exact positional patching (one term ablated at a time) moves the metric at the planted
    terms only: the reference is the signal's path, and the only one."""
    model, task, graph = setup
    exact = cf.score(model, task, method="exact", positions=SPANS, progress=False)
    layout = layout_for(task, SPANS)
    ref = reference(graph, layout)
    v = valid_like(graph, ref)
    s = exact.score_matrix.abs()
    assert float(s[ref].min()) > 5.0  # logit-difference units
    assert float(s[v & ~ref].max()) < 1e-4
    assert int(v.sum()) == graph.n_edges * 4  # PREV, MATCH, END and other


# ---------------------------------------------------------------------------- recovery
@pytest.mark.parametrize("positions", [SPANS, True], ids=["spans", "every-position"])
@pytest.mark.parametrize("method", METHODS)
def test_positional_masks_recover_the_planted_terms(setup, method, positions):
    model, task, graph = setup
    layout = layout_for(task, positions)
    ref = reference(graph, layout)
    v = valid_like(graph, ref)
    s = positional_scores(model, task, method, positions, train_steps=STEPS)
    assert s.edges.shape == ref.shape and s.kept.shape == ref.shape
    assert roc_auc(s.edges, ref, v) == 1.0
    assert bool(torch.isnan(s.edges[~v]).all()) and bool(torch.isfinite(s.edges[v]).all())
    assert float(s.edges[v].min()) >= 0.0 and float(s.edges[v].max()) <= 1.0
    assert bool((s.kept[ref]).all()) and not bool(s.kept[~v].any())
    if method == "edge-pruning":  # the mask's own circuit is exactly the planted terms
        assert torch.equal(s.kept, ref)
    else:  # UGS's lighter penalty keeps a few more of the 1,650 terms within 40 steps
        assert int(s.kept.sum()) <= 3 * len(PLANTED_COLUMNS)
    assert s.orientation == "helps-positive"


# ---------------------------------------------------------------------------- the masked run
def _spanned(task: Task) -> Task:
    n = len(task)
    return task.with_spans(A=torch.full((n,), 0), B=torch.tensor([[1, 3]] * n), END=task.readout)


def _kl(clean: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """KL(clean || other) per prompt from readout logits, by hand."""
    lp, lq = clean.double().log_softmax(-1), other.double().log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1)


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa-llama3rope"])
def test_the_positional_masked_run_at_its_ends_is_hfs_clean_and_corrupted_run(name):
    """The run the positional masks train through (``masks._fit_loss``): every term on gives
    HF's clean logits (KL 0), every term off HF's corrupted logits (the KL between the two by
    hand), and a mask constant over the columns the position-free masked run; padded prompts
    with spans and an ``other`` column."""
    hf = make_hf_model(name)
    model = cf.load(hf)
    task = _spanned(_random_task(n=5, padded=True))
    runs = prepared(model, task, ["A", "B", "END"], batch_size=3)
    graph = runs.graph
    P = runs.layout.n_columns
    assert runs.layout.names == ("A", "B", "END", "other")
    ones = valid_like(graph, torch.ones(graph.n_senders, graph.n_receivers, P)).float()
    hf_clean, hf_corrupted = task.run(hf, "clean"), task.run(hf, "corrupted")
    g = torch.Generator().manual_seed(0)
    free = torch.rand(graph.n_senders, graph.n_receivers, generator=g)
    for prep in runs:
        batch, idx = prep.batch, prep.batch.idx
        cols = runs.layout.batch(idx, batch.clean.shape[1])

        def run(mask, columns=cols, batch=batch, prep=prep):
            with torch.no_grad():
                return masked_forward(
                    model, graph, batch.clean, batch.attention_mask, prep.ablated, mask,
                    readout=batch.readout, columns=columns,
                )  # fmt: skip

        torch.testing.assert_close(run(ones), hf_clean[idx], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(run(ones * 0), hf_corrupted[idx], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(
            run(free[..., None].expand(-1, -1, P)), run(free, None), atol=1e-4, rtol=1e-4
        )
        with torch.no_grad():
            on = float(masks._fit_loss(runs, prep, ones, "kl"))
            off = float(masks._fit_loss(runs, prep, ones * 0, "kl"))
            task_off = float(masks._fit_loss(runs, prep, ones * 0, "task"))
        assert on == pytest.approx(0.0, abs=1e-5)
        assert off == pytest.approx(float(_kl(hf_clean[idx], hf_corrupted[idx]).mean()), rel=1e-3)
        change = task.metric_fn(hf_corrupted[idx], idx, reduce="none") - task.metric_fn(
            hf_clean[idx], idx, reduce="none"
        )
        assert task_off == pytest.approx(float((change**2).mean()), rel=1e-3)


@pytest.mark.parametrize("method", METHODS)
def test_training_starts_from_the_positional_run_at_its_ends(setup, method, monkeypatch):
    """At a starting logit of +20 every sampled term is on (the fit is 0: the clean run), at
    -20 every one is off (the fit is KL(clean || corrupted), computed from HF's runs)."""
    model, task, graph = setup
    hf = planted.planted_model(0)
    expected_off = float(_kl(task.run(hf, "clean"), task.run(hf, "corrupted")).mean())
    seen: list[tuple[torch.Tensor, float]] = []
    original = masks._fit_loss

    def recording(runs, prep, mask, objective):
        fit = original(runs, prep, mask, objective)
        seen.append((mask.detach().clone(), float(fit.detach())))
        return fit

    monkeypatch.setattr(masks, "_fit_loss", recording)
    v = valid_like(graph, torch.empty(graph.n_senders, graph.n_receivers, 4))
    for logit, want_mask, want_fit in ((20.0, 1.0, 0.0), (-20.0, 0.0, expected_off)):
        seen.clear()
        positional_scores(model, task, method, train_steps=1, init_logit=logit)
        ((mask, fit),) = seen
        assert mask.shape == v.shape
        assert bool((mask[v] == want_mask).all()) and bool((mask[~v] == 0).all())
        assert fit == pytest.approx(want_fit, abs=1e-5, rel=1e-4)
    assert expected_off > 1.0


# ---------------------------------------------------------------------------- seeds, resume
def test_the_same_seed_gives_the_same_positional_scores(setup):
    model, task, _ = setup
    a = positional_scores(model, task, "ugs", train_steps=10, mask_seed=3).edges
    b = positional_scores(model, task, "ugs", train_steps=10, mask_seed=3).edges
    c = positional_scores(model, task, "ugs", train_steps=10, mask_seed=4).edges
    v = ~torch.isnan(a)
    assert torch.equal(a[v], b[v])
    assert not torch.equal(a[v], c[v])


@pytest.mark.parametrize("method", METHODS)
def test_an_interrupted_positional_run_resumes_to_the_uninterrupted_result(
    setup, method, tmp_path, caplog, monkeypatch
):
    model, task, graph = setup
    steps = 12
    full = positional_scores(model, task, method, train_steps=steps)
    original = masks._fit_loss
    calls = {"n": 0}

    def signalling(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # during step 5: saved after it, at the next safe point
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(masks, "_fit_loss", signalling)
    with pytest.raises(Interrupted, match=rf"{method} interrupted: 5 of {steps} training steps"):
        positional_scores(model, task, method, train_steps=steps, checkpoint_dir=tmp_path)
    ckpt = tmp_path / f"{method}_checkpoint.pt"
    assert ckpt.is_file()
    monkeypatch.setattr(masks, "_fit_loss", original)
    # a position-free run, or one over other columns, does not take this checkpoint
    for other in (None, True):
        with pytest.raises(cf.InputError, match="options"):
            positional_scores(
                model, task, method, other, train_steps=steps, checkpoint_dir=tmp_path
            )
    with caplog.at_level(logging.WARNING, logger="circuitfind.checkpoint"):
        resumed = positional_scores(model, task, method, train_steps=steps, checkpoint_dir=tmp_path)
    assert any(f"5 of {steps} training steps" in r.getMessage() for r in caplog.records)
    v = valid_like(graph, full.edges)
    assert torch.equal(resumed.edges[v], full.edges[v])  # bit-identical
    assert torch.equal(resumed.kept, full.kept)
    assert not ckpt.exists() and not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------- warm start
def _quantiles(helps: torch.Tensor) -> torch.Tensor:
    q = torch.from_numpy(rankdata(helps.double().numpy())) - 1
    return q / (len(helps) - 1)


@pytest.mark.parametrize("init", ["exact", "eap-ig-inputs"])
def test_a_positional_warm_start_ranks_the_inits_positional_scores(setup, init):
    """The starting logits are 2 init_logit x the rank quantile of the init's own positional
    scores (cf.score(..., positions=) of that method; logit-difference scores that build the
    metric up: helpfulness = -score), so with no training the planted terms already come
    first, in the init's order; a cold start ties every term."""
    model, _, graph = setup
    task = disjoint_task(n=4)  # exact patching runs three times here
    runs = prepared(model, task, SPANS)
    ref = reference(graph, runs.layout)
    v = valid_like(graph, ref)
    logits = masks.warm_start_logits(runs, init, 2.0)
    theirs = cf.score(model, task, method=init, positions=SPANS, progress=False).score_matrix
    assert logits.shape == theirs.shape == ref.shape
    torch.testing.assert_close(logits[v].double(), 4.0 * _quantiles(-theirs[v]), atol=1e-6, rtol=0)
    assert float(logits[ref].min()) > float(logits[v & ~ref].max())
    for method in METHODS if init != "exact" else ("ugs",):
        cold = positional_scores(model, task, method, train_steps=0)
        assert roc_auc(cold.edges, ref, v) == 0.5
        warm = positional_scores(model, task, method, train_steps=0, init=init)
        keep = warm.edges[v]
        order = torch.argsort(logits[v], stable=True)
        assert bool((keep[order].diff() >= 0).all())  # the keep probability in the init's order
        assert roc_auc(warm.edges, ref, v) == 1.0


def test_a_warm_start_from_a_position_free_method_is_broadcast_over_the_columns(setup, caplog):
    """Node ablation has no position-aware form: each column of an edge starts from that
    edge's position-free warm-start logit."""
    model, task, _ = setup
    runs = prepared(model, task, SPANS)
    with caplog.at_level(logging.INFO, logger="circuitfind.methods.masks"):
        logits = masks.warm_start_logits(runs, "node", 2.0)
    assert any("no position-aware form" in r.getMessage() for r in caplog.records)
    free = masks.warm_start_logits(prepared(model, task, None), "node", 2.0)
    assert logits.shape == (*free.shape, 4)
    for k in range(4):
        assert torch.equal(logits[..., k], free)
    assert runs.layout is not None  # the runs keep their layout


def test_a_trained_warm_start_keeps_the_planted_terms(setup):
    model, task, graph = setup
    s = positional_scores(model, task, "edge-pruning", train_steps=STEPS, init="eap-ig-inputs")
    assert torch.equal(s.kept, reference(graph, layout_for(task, SPANS)))


# ---------------------------------------------------------------------------- end to end
def test_discover_with_positions_end_to_end(setup, tmp_path):
    """score -> prune -> evaluate, the JSON round trip and the positional diagram, as for a
    positional EAP circuit."""
    from circuitfind.render import dot_source

    model, task, graph = setup
    layout = layout_for(task, SPANS)
    ref = reference(graph, layout)
    scored = cf.score(
        model, task, method="edge-pruning", positions=SPANS, train_steps=STEPS, progress=False
    )
    assert scored.positions == ("PREV", "MATCH", "END", "other")
    assert torch.equal(scored.in_graph, ref)  # the mask's own circuit
    assert scored.meta["score_kind"] == "helps-positive"
    circuit = cf.discover(
        model, task, method="edge-pruning", positions=SPANS, train_steps=STEPS, top_n=5,
        progress=False,
    )  # fmt: skip
    assert torch.equal(circuit.in_graph, ref)
    assert sorted(circuit.edge_names) == sorted(f"{e}@{c}" for e, c in PLANTED_COLUMNS.items())
    assert circuit.meta["faithfulness"] == pytest.approx(1.0, abs=1e-4)
    assert circuit.n_edges_total == graph.n_edges * 4
    path = circuit.to_json(tmp_path / "c.json")
    data = json.loads(path.read_text())
    assert data["cfg"]["positions"] == ["PREV", "MATCH", "END", "other"]
    assert data["meta"]["method"] == "edge-pruning"
    back = Circuit.from_json(path)
    assert back.positions == circuit.positions
    assert torch.equal(back.in_graph, circuit.in_graph)
    v = circuit.valid
    torch.testing.assert_close(back.score_matrix[v], circuit.score_matrix[v])
    assert torch.isnan(back.score_matrix[~v]).all()
    ev = cf.evaluate(model, task, back)
    assert ev.metric_circuit == pytest.approx(circuit.meta["metrics"]["circuit"], abs=1e-5)
    assert ev.faithfulness == pytest.approx(1.0, abs=1e-4)
    src = dot_source(back).source
    for col in ("PREV", "MATCH", "END"):
        k = back.positions.index(col)
        assert f"cluster_col{k}" in src and f"label={col}" in src


def test_score_plans_a_positional_mask_with_its_columns(setup):
    model, task, _ = setup
    c = cf.score(
        model, task, method="ugs", positions=True, train_steps=1, max_memory="64GiB",
        progress=False,
    )  # fmt: skip
    assert c.score_matrix.shape[-1] == 15
    free = cf.score(model, task, method="ugs", train_steps=1, max_memory="64GiB", progress=False)
    assert (
        c.meta["memory_plan"]["estimated_peak_bytes"]
        > free.meta["memory_plan"]["estimated_peak_bytes"]
    )


@pytest.mark.parametrize("method", METHODS)
def test_the_memory_plan_of_a_positional_mask_is_within_25_percent_of_the_measured_peak(method):
    from circuitfind.memory import measure_peak
    from circuitfind.plan import make_plan
    from tests.test_plan import SHAPES, _model, _task

    _, n, p, b = SHAPES["llama-gqa"]
    model = _model("llama-gqa")
    task = _task(n, p, model.cfg.d_vocab)
    with measure_peak() as meter:
        runs = prepared(model, task, True, batch_size=b)
        method_spec(method).function()(runs, train_steps=3)
    plan = make_plan(model, task, method, batch_size=b, max_memory="64GiB", columns=p)
    assert "positional stacks" in {t.name for t in plan.terms}
    ratio = plan.working / meter.peak
    assert 0.75 <= ratio <= 1.25, (plan.working, meter.peak, plan.table())


# ---------------------------------------------------------------------------- slow
@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_on_the_zoo_ioi_model_the_positional_mask_is_a_small_faithful_circuit(method):
    """On a trained model, over IOI's spans, warm-started from positional EAP-IG: the mask's
    own circuit holds at most a sixth of the 1,310 (edge, span) terms and reaches faithfulness
    0.85 (measured: edge-pruning 95 terms, 0.91; ugs 195 terms, 1.03)."""
    model = cf.load("zoo:ioi")
    task = cf.get_task("ioi", model, n=16, seed=0)
    spans = ["S1", "IO", "S2", "END"]
    scored = cf.score(
        model, task, method=method, init="eap-ig-inputs", positions=spans, progress=False
    )
    ev = cf.evaluate(model, task, scored, runs=scored.runs)
    assert scored.n_edges_total == scored.graph.n_edges * 5 == 1310
    assert 0 < int(scored.in_graph.sum()) <= scored.n_edges_total // 6
    assert ev.faithfulness >= 0.85
