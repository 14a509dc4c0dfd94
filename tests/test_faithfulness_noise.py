"""Faithfulness with its noise: the effect, its error, the bootstrap error of the ratio, and the
flag that says when the ratio means nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import circuitfind as cf
from circuitfind.checks import check_effect
from circuitfind.evaluation import measure
from circuitfind.tasks import Task


def test_effect_and_its_error_are_the_per_prompt_mean_and_standard_error():
    g = torch.Generator().manual_seed(0)
    full = 2.0 + 0.5 * torch.randn(200, generator=g)
    empty = -1.0 + 0.5 * torch.randn(200, generator=g)
    circuit = empty + 0.8 * (full - empty)  # f = 0.8 on every prompt
    f = measure(circuit, full, empty)
    d = (full - empty).double().numpy()
    assert f.effect == pytest.approx(d.mean(), rel=1e-9)
    assert f.effect_stderr == pytest.approx(d.std(ddof=1) / math.sqrt(200), rel=1e-9)
    assert f.value == pytest.approx(0.8, abs=1e-6)
    assert f.stderr < 1e-6  # the same ratio on every prompt: no spread to resample
    assert f.reliable and f.warning is None


def test_the_bootstrap_error_of_f_matches_the_delta_method():
    """For f = mean(a) / mean(b) the delta method gives se^2 ~ (var(a) - 2 f cov(a, b)
    + f^2 var(b)) / (n mean(b)^2): the bootstrap should agree to within its own noise."""
    g = torch.Generator().manual_seed(1)
    n = 400
    full = 3.0 + torch.randn(n, generator=g)
    empty = torch.zeros(n)
    circuit = 0.6 * full + 0.7 * torch.randn(n, generator=g)
    f = measure(circuit, full, empty, n_boot=4000)
    a, b = circuit.double().numpy(), full.double().numpy()
    r = a.mean() / b.mean()
    cov = np.cov(a, b)
    delta = math.sqrt((cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (n * b.mean() ** 2))
    assert f.stderr == pytest.approx(delta, rel=0.1)
    assert f.ci_low < f.value < f.ci_high


def test_an_effect_within_its_noise_is_flagged():
    g = torch.Generator().manual_seed(2)
    full = torch.randn(50, generator=g)
    empty = torch.randn(50, generator=g)
    circuit = torch.randn(50, generator=g)
    f = measure(circuit, full, empty)
    assert not f.reliable
    assert "standard errors" in f.warning and "50 prompts" in f.warning
    assert "unreliable" in str(f)


def test_a_tiny_effect_against_the_metric_scale_is_flagged():
    full = torch.full((100,), -5.0) + torch.linspace(-1e-4, 1e-4, 100)
    empty = full - 0.01  # a clear but negligible effect: 0.2% of |metric|
    f = measure(full - 0.005, full, empty)
    assert f.effect == pytest.approx(0.01, rel=1e-4)
    assert not f.reliable and "barely does this task" in f.warning


def test_a_metric_that_cannot_move_is_refused():
    x = torch.randn(10)
    with pytest.raises(cf.InputError, match="cannot move"):
        check_effect(x, x + 1e-9)
    check_effect(x, x + 0.1)  # moves: no error
    y = torch.tensor([1.0, -1.0] * 5)
    check_effect(x, x + y)  # moves, though it averages out: flagged by measure, not refused
    with pytest.raises(cf.InputError, match="not finite"):
        check_effect(x, x * float("nan"))


def _induction(n: int = 16, same_from: int | None = None):
    model = cf.load("zoo:induction-2l")
    task = cf.get_task("induction", model, n=n, seed=0)
    if same_from is None:
        return model, task
    corrupted = task.corrupted.clone()
    corrupted[same_from:] = task.clean[same_from:]
    return model, Task.from_tokens(
        task.clean, corrupted, task.answer, readout=task.readout, metric=task.metric
    )


def test_discover_refuses_a_task_whose_metric_cannot_move():
    model, task = _induction(n=8, same_from=0)  # corrupted == clean everywhere
    with pytest.raises(cf.InputError, match="equals its clean prompt"):
        cf.discover(model, task, method="eap", progress=False)


def test_the_pruning_search_never_counts_an_unreliable_target_as_met():
    model, task = _induction(n=16, same_from=1)  # only the first prompt is corrupted
    circuit = cf.discover(model, task, method="eap", target_faithfulness=0.9, progress=False)
    assert circuit.meta["reliable"] is False
    assert "standard errors" in circuit.meta["warning"]
    assert circuit.meta["pruning"]["met"] is False
    assert circuit.n_edges == circuit.graph.n_edges  # nothing verified: every edge kept
    ev = circuit.meta["evaluation"]
    assert ev["reliable"] is False and ev["effect_stderr"] > 0


def test_a_reliable_discovery_reports_its_errors():
    model, task = _induction(n=32)
    circuit = cf.discover(model, task, method="eap-ig-inputs", curve=True, progress=False)
    ev = circuit.meta["evaluation"]
    assert circuit.meta["reliable"] is True and circuit.meta["pruning"]["met"] is True
    assert ev["effect"] > 3 * ev["effect_stderr"] > 0
    assert 0 <= ev["faithfulness_stderr"] < 0.1
    assert ev["faithfulness_ci"][0] <= ev["faithfulness"] <= ev["faithfulness_ci"][1]
    assert len(ev["curve_stderr"]) == len(ev["curve"]) and ev["cpr_stderr"] is not None
    assert ev["metric_name"] == "logprob" and ev["higher_is_better"] is True
    # the last curve point keeps every edge: the full model, f = 1 with no spread
    assert ev["curve"][-1][1] == pytest.approx(1.0, abs=1e-5)
    assert ev["curve_stderr"][-1] == pytest.approx(0.0, abs=1e-6)
