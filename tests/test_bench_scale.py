"""The scale suite: its memory measurer, the 8B-shape graph and its registration."""

from __future__ import annotations

import sys

import pytest
import torch

import circuitfind as cf
from circuitfind.bench import get_suite
from circuitfind.bench.scale import LLAMA_8B_EDGES, QUICK, BigShape, big_graph_model, peak_rss

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")


@linux
def test_peak_rss_counts_a_known_allocation() -> None:
    n = 64 * 2**20  # bytes

    def alloc() -> torch.Tensor:
        return torch.ones(n // 4)  # touched pages: resident

    peak, kept = peak_rss(alloc)
    assert kept.numel() * 4 == n
    assert 0.95 * n <= peak <= 1.25 * n


@linux
def test_peak_rss_sees_a_temporary_peak() -> None:
    n = 48 * 2**20

    def temporary() -> float:
        return float(torch.ones(n // 4).sum())  # freed before the call returns

    peak, value = peak_rss(temporary)
    assert value == n // 4
    assert peak >= 0.95 * n


def test_llama_8b_shape_has_the_issue_s_edge_count() -> None:
    hf = big_graph_model(BigShape(), seed=0)
    graph = cf.Graph.from_model(cf.load(hf))
    assert graph.n_edges == LLAMA_8B_EDGES == 1_592_881


def test_scale_suite_is_registered_and_quick_is_small() -> None:
    suite = get_suite("scale")
    assert suite.load().__module__ == "circuitfind.bench.scale"
    assert QUICK.sizes == ("GPT-2 small",) and QUICK.size_layers == 2


@pytest.mark.slow
def test_scale_quick_run_reports_ratios(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from circuitfind.bench.scale import run

    out = run(tmp_path, quick=True, seed=0, command="test")
    big = out["big"]
    for name in ("eap", "eap-ig-inputs"):
        m = big["methods"][name]
        assert m["ratio"] > 0 and m["min_s"] <= m["seconds"] <= m["max_s"]
        assert m["peak_bytes"] > 0 and m["memory_ratio"] is not None
        p = big["planned"][name]
        assert p["batch_size"] >= 1 and p["meter_bytes"] > 0 and p["contraction_s"] > 0
        # the plan's budget is 1.5 x the HF F+B live tensors (plus weights): its run keeps to it
        assert p["plan_bytes"] <= big["plan_budget_bytes"]
        assert m["ratio_with_contraction"] < m["ratio"]
    assert (tmp_path / "scale.md").is_file()
    assert "planned: batch" in (tmp_path / "scale.md").read_text()
    assert set(out["sizes"][0]["methods"]) >= {"eap", "exact", "acdc"}
