"""Learned edge masks (edge-pruning, ugs): the estimators against closed forms and Monte Carlo,
recovery of the planted circuit, seeds, resuming, warm starts and option errors."""

from __future__ import annotations

import logging
import os
import signal

import pytest
import torch
from scipy.stats import rankdata

import circuitfind as cf
from circuitfind.bench import planted
from circuitfind.checkpoint import Interrupted
from circuitfind.evaluation import roc_auc
from circuitfind.methods import masks
from circuitfind.runs import PreparedRuns
from tests.factories import method_scores

METHODS = ("edge-pruning", "ugs")
STEPS = 40  # enough for both on the planted model (about 1-2 s each)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    model = cf.load(planted.planted_model(0))
    task = planted.planted_task(n=8, seed=0)
    graph = cf.Graph.from_model(model)
    return model, task, graph, planted.ground_truth(graph, "resample")


# ---------------------------------------------------------------------------- estimators
def test_hard_concrete_keep_probability_is_the_frequency_of_nonzero_samples():
    gen = torch.Generator().manual_seed(0)
    log_alpha = torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.0, 4.0])
    u = torch.rand(200_000, 6, generator=gen).clamp(1e-6, 1 - 1e-6)
    z = masks.hard_concrete_sample(log_alpha, u)
    assert float(z.min()) == 0.0 and float(z.max()) == 1.0  # stretched and clipped
    freq = (z > 0).double().mean(0)
    expected = masks.hard_concrete_keep_probability(log_alpha).double()
    assert torch.allclose(freq, expected, atol=4e-3)
    # the closed form by hand: P(z > 0) = sigmoid(log_alpha - beta * log(-l / r))
    by_hand = torch.sigmoid(log_alpha - (2 / 3) * torch.log(torch.tensor(0.1 / 1.1)))
    assert torch.allclose(expected.float(), by_hand, atol=1e-6)


def test_ugs_masks_have_mean_p_and_an_unbiased_gradient():
    gen = torch.Generator().manual_seed(0)
    theta = torch.tensor([-2.0, -0.5, 0.0, 1.0, 2.5]).repeat(100_000, 1).requires_grad_(True)
    u = torch.rand(theta.shape, generator=gen)
    m = masks.ugs_sample(theta, u)
    p = torch.sigmoid(theta[0]).detach()
    assert torch.allclose(m.mean(0).detach(), p, atol=4e-3)  # E[m] = p
    (grad,) = torch.autograd.grad(m.sum(), theta)
    # d E[m] / d theta = p (1 - p), estimated without bias by the window's pathwise gradient
    assert torch.allclose(grad.mean(0), p * (1 - p), atol=6e-3)


# ---------------------------------------------------------------------------- planted circuit
@pytest.mark.parametrize("method", METHODS)
def test_learned_masks_recover_the_planted_circuit(setup, method):
    model, task, graph, gt = setup
    s = method_scores(model, task, method, train_steps=STEPS)
    v = graph.valid
    assert roc_auc(s.edges, gt, v) == 1.0
    assert torch.equal(s.kept, gt)  # the mask's own circuit is exactly the planted one
    assert bool(torch.isnan(s.edges[~v]).all()) and float(s.edges[v].min()) >= 0
    assert s.orientation == "helps-positive"


def test_the_task_metric_objective_also_recovers_it(setup):
    """objective="task": the squared change of the logit difference instead of KL."""
    model, task, graph, gt = setup
    s = method_scores(model, task, "edge-pruning", train_steps=STEPS, objective="task")
    assert roc_auc(s.edges, gt, graph.valid) == 1.0
    assert torch.equal(s.kept, gt)


def test_the_same_seed_gives_the_same_scores(setup):
    model, task, _, _ = setup
    a = method_scores(model, task, "ugs", train_steps=10, mask_seed=3).edges
    b = method_scores(model, task, "ugs", train_steps=10, mask_seed=3).edges
    c = method_scores(model, task, "ugs", train_steps=10, mask_seed=4).edges
    v = ~torch.isnan(a)
    assert torch.equal(a[v], b[v])
    assert not torch.equal(a[v], c[v])


@pytest.mark.parametrize("method", METHODS)
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(
    setup, method, tmp_path, caplog, monkeypatch
):
    model, task, graph, _ = setup
    steps = 12
    full = method_scores(model, task, method, train_steps=steps)
    original = masks._fit_loss
    calls = {"n": 0}

    def signalling(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # during step 5: saved after it, at the next safe point
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(masks, "_fit_loss", signalling)
    with pytest.raises(Interrupted, match=rf"{method} interrupted: 5 of {steps} training steps"):
        method_scores(model, task, method, train_steps=steps, checkpoint_dir=tmp_path)
    ckpt = tmp_path / f"{method}_checkpoint.pt"
    assert ckpt.is_file()
    monkeypatch.setattr(masks, "_fit_loss", original)
    with caplog.at_level(logging.WARNING, logger="circuitfind.checkpoint"):
        resumed = method_scores(model, task, method, train_steps=steps, checkpoint_dir=tmp_path)
    assert any(f"5 of {steps} training steps" in r.getMessage() for r in caplog.records)
    v = graph.valid
    assert torch.equal(resumed.edges[v], full.edges[v])
    assert torch.equal(resumed.kept, full.kept)
    assert not ckpt.exists() and not list(tmp_path.iterdir())
    # a checkpoint of other options is refused, naming what differs
    monkeypatch.setattr(masks, "_fit_loss", signalling)
    calls["n"] = 0
    with pytest.raises(Interrupted):
        method_scores(model, task, method, train_steps=steps, checkpoint_dir=tmp_path)
    monkeypatch.setattr(masks, "_fit_loss", original)
    with pytest.raises(cf.InputError, match="options"):
        method_scores(model, task, method, train_steps=steps + 1, checkpoint_dir=tmp_path)


# ---------------------------------------------------------------------------- warm start
def test_warm_start_logits_are_the_init_methods_helpfulness_ranks(setup):
    """Exact patching's logit-difference scores are ablated-minus-clean and the circuit builds
    the logit difference up (m(empty) < m(full)), so helpfulness = -score."""
    model, task, graph, gt = setup
    runs = PreparedRuns(model, task, "resample")
    logits = masks.warm_start_logits(runs, "exact", 2.0)
    exact = method_scores(model, task, "exact").edges
    v = graph.valid
    helps = -exact[v].double().numpy()
    q = (torch.from_numpy(rankdata(helps)) - 1) / (int(v.sum()) - 1)
    assert torch.allclose(logits[v].double(), 2 * 2.0 * q, atol=1e-6)
    assert float(logits[gt].min()) > float(logits[v & ~gt].max())  # the planted edges first


@pytest.mark.parametrize("method", METHODS)
def test_a_warm_start_is_used(setup, method):
    """With no training the warm-started mask already ranks the planted edges first (a cold
    start ties every edge); with training it keeps the same circuit as a cold start."""
    model, task, graph, gt = setup
    v = graph.valid
    cold = method_scores(model, task, method, train_steps=0)
    assert roc_auc(cold.edges, gt, v) == 0.5  # every edge alike
    warm0 = method_scores(model, task, method, train_steps=0, init="exact")
    assert roc_auc(warm0.edges, gt, v) == 1.0
    warm = method_scores(model, task, method, train_steps=STEPS, init="exact")
    assert torch.equal(warm.kept, gt)


# ---------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    ("method", "options", "match"),
    [
        ("edge-pruning", {"objective": "mse"}, "objective must be one of kl, task"),
        ("ugs", {"train_steps": -1}, "train_steps must be a whole number"),
        ("edge-pruning", {"target_sparsity": 1.0}, r"target_sparsity .* must be in \[0, 1\)"),
        ("edge-pruning", {"ramp": 2}, r"ramp .* must be in \[0, 1\]"),
        ("ugs", {"lr": 0.0}, r"lr .* must be a number > 0"),
        ("ugs", {"mask_lambda": -1.0}, "mask_lambda"),
        ("ugs", {"init": "no-such-method"}, "unknown method 'no-such-method'"),
        ("edge-pruning", {"mask_seed": 1.5}, "mask_seed must be a whole number"),
    ],
)
def test_bad_options_are_clear_errors(setup, method, options, match):
    model, task, _, _ = setup
    with pytest.raises(cf.InputError, match=match):
        method_scores(model, task, method, **options)


def test_the_table_rows_reach_the_functions(setup):
    """score passes the rows' options through; the mask's own circuit is score()'s."""
    model, task, _, gt = setup
    scored = cf.score(model, task, method="ugs", train_steps=STEPS, progress=False)
    assert scored.meta["options"]["train_steps"] == STEPS
    assert scored.meta["score_kind"] == "helps-positive"
    assert torch.equal(scored.in_graph, gt)
    with pytest.raises(cf.InputError, match="takes no option 'tau_x'"):
        cf.score(model, task, method="ugs", tau_x=1, progress=False)


def test_discover_prunes_the_mask_scores_like_any_scores(setup):
    model, task, _, gt = setup
    circuit = cf.discover(
        model, task, method="edge-pruning", train_steps=STEPS, top_n=5, progress=False
    )
    assert torch.equal(circuit.in_graph, gt)
    assert circuit.meta["faithfulness"] == pytest.approx(1.0, abs=1e-4)


# ---------------------------------------------------------------------------- slow
@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_on_the_zoo_ioi_model_the_learned_mask_is_a_small_faithful_circuit(method):
    """On a trained model, warm-started from EAP-IG: the mask's own circuit (score()'s
    ``in_graph``) holds at most a third of the edges and reaches faithfulness 0.8."""
    model = cf.load("zoo:ioi")
    task = cf.get_task("ioi", model, n=16, seed=0)
    scored = cf.score(model, task, method=method, init="eap-ig-inputs", progress=False)
    ev = cf.evaluate(model, task, scored, runs=scored.runs)
    assert 0 < int(scored.in_graph.sum()) <= scored.graph.n_edges // 3
    assert ev.faithfulness >= 0.8
