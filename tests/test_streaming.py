"""Streaming prepared runs: one batch's values alive at a time, the same scores.

A streaming run makes each batch's ablated values when a method first reads them and forgets
them when it is done (EAP writes its differences over them); the scores must equal those of
runs that keep every batch, for every ablation and EAP variant, and a later reader (evaluation)
gets the same values made again. The memory plan streams where that lets a larger batch fit,
and its estimate holds for streaming runs as for kept ones.
"""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from circuitfind.memory import measure_peak
from circuitfind.methods import method_spec
from circuitfind.plan import make_plan
from circuitfind.runs import PreparedRuns
from tests.factories import make_hf_model
from tests.test_plan import _model, _task

FAMILIES = ["gpt2", "llama-gqa-llama3rope", "gpt_neox-parallel", "gemma2-softcap-sliding"]


@pytest.mark.parametrize("family", FAMILIES)
def test_node_outputs_without_a_cache_equal_the_cache(family: str) -> None:
    model = cf.load(make_hf_model(family))
    tokens = torch.randint(0, model.cfg.d_vocab, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(tokens)
    mask[0, :2] = 0  # left padding on one row
    want = model.cache(tokens, mask).node_outputs()
    got = model.node_outputs(tokens, mask)
    assert torch.equal(got, want)


@pytest.mark.parametrize(
    ("method", "ablation"),
    [
        ("eap", "resample"),
        ("eap", "mean"),
        ("eap", "zero"),
        ("eap-ig-inputs", "resample"),
        ("eap-ig-activations", "resample"),
        ("eap-ig-inputs", "mean-positional"),
    ],
)
def test_streaming_scores_equal_kept_runs(method: str, ablation: str) -> None:
    model = _model("llama-gqa")
    task = _task(7, 12, model.cfg.d_vocab)
    options = {"steps": 3} if method != "eap" else {}
    fn = method_spec(method).function()
    kept = fn(PreparedRuns(model, task, ablation, batch_size=3), **options).edges
    runs = PreparedRuns(model, task, ablation, batch_size=3, streaming=True)
    streamed = fn(runs, **options).edges
    torch.testing.assert_close(streamed, kept, rtol=1e-5, atol=1e-7, equal_nan=True)
    assert all(p._ablated is None and p._cache is None for p in runs.batches)
    # a later reader gets the same values, made again
    ref = PreparedRuns(model, task, ablation, batch_size=3)
    mask = torch.rand(runs.graph.valid.shape, generator=torch.Generator().manual_seed(0)) > 0.3
    torch.testing.assert_close(runs.metric_of(mask), ref.metric_of(mask))
    assert all(p._ablated is None for p in runs.batches)


def test_streaming_keeps_one_batch_alive() -> None:
    """Peak of EAP over 4 batches: kept runs hold every batch's ablated values, streaming
    runs one batch's (its differences written over them); the plan's estimate holds for both."""
    model = _model("gpt2")
    task = _task(16, 16, model.cfg.d_vocab)
    S, d = model.cfg.n_layers * (model.cfg.n_heads + 1) + 1, model.cfg.d_model
    one_batch = S * 4 * 16 * d * 4
    peaks = {}
    for streaming in (False, True):
        with measure_peak() as meter:
            runs = PreparedRuns(model, task, batch_size=4, streaming=streaming)
            method_spec("eap").function()(runs)
        peaks[streaming] = meter.peak
        plan = make_plan(model, task, "eap", batch_size=4, max_memory="64GiB", streaming=streaming)
        assert plan.streaming is streaming
        assert 0.75 <= plan.working / meter.peak <= 1.25, (streaming, plan.table(), meter.peak)
    # three batches' ablated values and one batch's separate differences less
    assert peaks[False] - peaks[True] >= 3.5 * one_batch


def test_the_plan_streams_when_that_fits_a_larger_batch() -> None:
    model = _model("gpt2")
    task = _task(64, 16, model.cfg.d_vocab)
    kept = make_plan(model, task, "eap", batch_size=8, max_memory="64GiB", streaming=False)
    streamed = make_plan(model, task, "eap", batch_size=8, max_memory="64GiB", streaming=True)
    assert streamed.total < kept.total
    budget = (kept.total + streamed.total) // 2
    plan = make_plan(model, task, "eap", max_memory=budget)
    assert plan.streaming and plan.batch_size >= 8 and plan.total <= budget
    assert not make_plan(model, task, "eap", max_memory=budget, streaming=False).streaming
    # an explicit batch over the budget kept, within it streamed
    assert make_plan(model, task, "eap", batch_size=8, max_memory=budget).streaming
    assert "streaming" in plan.table()
    # a method that reads its runs many times never streams, and cannot be asked to
    assert not make_plan(model, task, "acdc", max_memory="64GiB").streaming
    with pytest.raises(cf.InputError, match="cannot stream"):
        make_plan(model, task, "acdc", max_memory="64GiB", streaming=True)
    # score records the choice and gives the kept run's scores
    circuit = cf.score(model, task, method="eap", max_memory=budget, progress=False)
    assert circuit.meta["memory_plan"]["streaming"] is True
    assert circuit.runs.streaming
    ref = cf.score(model, task, method="eap", batch_size=circuit.meta["batch_size"], progress=False)
    torch.testing.assert_close(
        circuit.score_matrix, ref.score_matrix, rtol=1e-5, atol=1e-7, equal_nan=True
    )
