"""The ACDC comparison with auto-circuit: its sample, order, tau grid and edge names (the run
itself needs auto-circuit's environment and takes minutes: ``reports/speed_acdc.md``), and that
it says "unavailable" rather than failing when that environment is missing."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import circuitfind as cf
from circuitfind.bench.speed.acdc_peer import (
    acdc_order,
    against_autocircuit_acdc,
    full_run_in_state,
    removed_later,
    round_tau,
    sample_edges,
    sharp_case,
    state_penalty,
)
from circuitfind.bench.speed.cases import QUICK, Shape
from circuitfind.bench.speed.peers import autocircuit_edge_name, to_autocircuit_edge_name
from tests.factories import make_hf_model


def test_edge_names_round_trip_over_a_whole_graph() -> None:
    graph = cf.Graph.from_model(cf.load(make_hf_model("gpt2")))
    for r in range(graph.n_receivers):
        for s in range(int(graph.n_upstream[r])):
            name = graph.edge_name(s, r)
            assert autocircuit_edge_name(to_autocircuit_edge_name(name)) == name
    assert to_autocircuit_edge_name("input->a1.h2<q>") == "Resid Start->A1.2.Q"
    assert to_autocircuit_edge_name("m11->logits") == "MLP 11->Resid End"


def test_sample_is_the_logits_and_one_receiver_a_layer_in_acdc_order() -> None:
    model = cf.load(make_hf_model("gpt2"))
    graph = cf.Graph.from_model(model)
    sample = sample_edges(graph, 3, seed=1)
    assert not (sample & ~graph.valid).any()
    receivers = sample.any(0).nonzero().flatten().tolist()
    layers = {graph.receivers[r].layer for r in receivers}
    assert layers == {None, *range(model.cfg.n_layers)}
    assert len(receivers) == model.cfg.n_layers + 1
    for r in receivers:
        assert int(sample[:, r].sum()) == min(3, int(graph.valid[:, r].sum()))
    order = acdc_order(graph, sample)
    assert len(order) == int(sample.sum())
    keys = [(r, s) for s, r in order]
    assert keys == sorted(keys, reverse=True)  # receivers from the last, senders from the last
    assert torch.equal(sample, sample_edges(graph, 3, seed=1))  # seeded


def test_tau_on_auto_circuits_grid() -> None:
    assert round_tau(1e-3) == (1, -3)
    assert round_tau(3.04e-5) == (3, -5)
    assert round_tau(9.7e-4) == (1, -3)
    with pytest.raises(ValueError):
        round_tau(0.0)


def test_sharp_case_scales_the_logits_only() -> None:
    cfg = replace(QUICK, autocircuit_shape=Shape(1, 2, 32), prompts=2, tokens=4)
    plain, sharp = sharp_case(cfg, 0, 1.0), sharp_case(cfg, 0, 10.0)
    x = plain.task.clean
    with torch.no_grad():
        a = plain.hf.transformer(x).last_hidden_state
        b = sharp.hf.transformer(x).last_hidden_state
    torch.testing.assert_close(b, 10.0 * a, rtol=1e-4, atol=1e-5)


def test_unavailable_without_the_environment(tmp_path) -> None:
    cfg = replace(QUICK, autocircuit_venv=tmp_path / "none", build_venv=False)
    out = against_autocircuit_acdc(cfg, 0)
    assert out["available"] is False and "auto-circuit environment" in out["reason"]


def test_removed_later_draws_only_edges_into_later_receivers() -> None:
    graph = cf.Graph.from_model(cf.load(make_hf_model("gpt2")))
    gen = torch.Generator().manual_seed(0)
    for start in range(2):
        drop = removed_later(graph, start, 0.5, gen)
        assert not (drop & ~graph.valid).any()
        for r, rec in enumerate(graph.receivers):
            if rec.layer is not None and rec.layer <= start:
                assert not drop[:, r].any()
    later = torch.tensor([rec.layer is None or rec.layer > 0 for rec in graph.receivers])
    pool = graph.valid & later[None, :]
    assert torch.equal(removed_later(graph, 0, 1.0, gen), pool)
    assert not removed_later(graph, 0, 0.0, gen).any()
    frac = float(removed_later(graph, 0, 0.3, gen).sum()) / float(pool.sum())
    assert abs(frac - 0.3) < 0.1


def test_full_run_in_state_scales_each_layer_by_its_penalty() -> None:
    rows = [{"start_layer": 0, "kept_s": 2.0, "removed_0.5_s": 3.0}]
    rows.append({"start_layer": 1, "kept_s": 1.0, "removed_0.5_s": 1.0})
    pen = state_penalty(rows, 0.5)
    assert pen == {0: 1.5, 1: 1.0}
    # layer 2 (the logits' trials) has no penalty measured: 1
    total = full_run_in_state({0: 1.0, 1: 0.5, 2: 0.1}, {0: 10, 1: 20, 2: 30}, pen)
    assert total == pytest.approx(1.0 * 1.5 * 10 + 0.5 * 20 + 0.1 * 30)
