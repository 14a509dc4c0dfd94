"""The bootstrap and the ensemble over position-aware edges: (edge, column) terms resampled,
named ``edge@column``, with the planted circuit's terms derived from its construction."""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from circuitfind.bench.planted import SEGMENT
from circuitfind.errors import InputError
from circuitfind.methods.eap import score_eap
from circuitfind.resample import PromptRuns, per_prompt_scores
from circuitfind.scoring import prepare
from circuitfind.stability import agreement, bootstrap, frequency_matrix

pytestmark = pytest.mark.usefixtures("one_thread")


def planted_terms() -> set[str]:
    """The planted model's circuit, position by position (under resample ablation the
    position edges carry nothing): prompts are A A[:-1] (T = 2 SEGMENT - 1 tokens) read out at
    the last token; the induction head's query reads that token, its key and value the
    position after A's first copy of it (SEGMENT - 1), whose PREV came from the previous-token
    head's value at SEGMENT - 2; the head writes the answer to the logits at the readout."""
    readout, key = 2 * SEGMENT - 2, SEGMENT - 1
    return {
        f"input->a1.h0<q>@{readout}",
        f"a1.h0->logits@{readout}",
        f"input->a1.h0<v>@{key}",
        f"a0.h0->a1.h0<k>@{key}",
        f"input->a0.h0<v>@{key - 1}",
    }


@pytest.mark.parametrize("method", ["exact", "eap"])
def test_planted_terms_are_kept_in_every_resample(planted, method) -> None:
    model, task = planted
    c = cf.discover(
        model, task, method=method, positions=True, top_n=5, bootstrap=6, seed=3, progress=False
    )
    assert set(c.edge_names) == planted_terms()
    st = c.meta["stability"]
    assert st["how"] == "per-prompt scores reindexed"
    assert st["frequency"] == {name: 1.0 for name in planted_terms()}
    assert set(st["core"]) == planted_terms() and st["contingent"] == []
    assert st["circuit_core_share"] == 1.0
    freq = frequency_matrix(c)
    assert freq is not None and freq.shape == c.score_matrix.shape
    assert float(freq.sum()) == 5.0
    for name in planted_terms():
        edge, col = name.rsplit("@", 1)
        e = c.graph.edge(edge)
        assert float(freq[e.sender_index, e.receiver_index, c.positions.index(col)]) == 1.0
    # the merged view (the explorer's): each edge's most often kept column
    merged = frequency_matrix(c.collapsed())
    assert merged is not None and merged.shape == c.graph.valid.shape
    assert float(merged.sum()) == 5.0


def test_positional_resample_scores_are_rescoring_the_resampled_prompts(planted) -> None:
    """A resample's positional EAP scores, as the bootstrap reads them (the mean of per-prompt
    scores), equal EAP on a fresh task of those prompts (new runs, its own layout)."""
    model, task = planted
    runs = prepare(model, task, "resample")
    runs.layout = cf.positions.layout_for(task, True)
    per = per_prompt_scores(runs, "eap")
    assert per.edges.shape == (8, *runs.graph.valid.shape, 15)
    idx = torch.tensor([0, 2, 2, 5, 7, 7, 7, 1])
    mean, _ = per.mean(idx)
    view = score_eap(PromptRuns(runs, idx)).edges
    fresh = cf.score(model, task[idx], method="eap", positions=True, progress=False)
    ok = ~torch.isnan(fresh.score_matrix)
    assert torch.equal(ok, ~torch.isnan(mean))
    assert torch.allclose(mean[ok], fresh.score_matrix[ok], atol=1e-4, rtol=1e-4)
    assert torch.allclose(view[ok], fresh.score_matrix[ok], atol=1e-4, rtol=1e-4)


def test_positional_bootstrap_is_reproducible_with_a_seed(tmp_path) -> None:
    model = cf.load("zoo:induction-2l")
    task = cf.get_task("induction", model, n=8, seed=0)
    c = cf.discover(model, task, method="eap", positions=True, top_n=20, progress=False)
    a, b = bootstrap(c, 5, seed=11), bootstrap(c, 5, seed=11)
    meta_a, meta_b = a.to_meta(c), b.to_meta(c)
    meta_a.pop("time_s"), meta_b.pop("time_s")
    assert torch.equal(a.frequency, b.frequency) and meta_a == meta_b
    assert a.frequency.shape == c.score_matrix.shape
    assert meta_a["frequency"] and all("@" in n for n in meta_a["frequency"])
    assert a.intervals["faithfulness"].n == 5
    # the circuit file keeps the positional frequencies, readable again
    c.meta["stability"] = a.to_meta(c)
    c.to_json(tmp_path / "c.json")
    again = cf.Circuit.from_json(tmp_path / "c.json")
    assert torch.equal(frequency_matrix(again), frequency_matrix(c))


def test_positional_ensemble_names_terms_and_refuses_mixed_circuits(planted) -> None:
    model, task = planted
    c = cf.discover(
        model, task, method="eap", positions=True, top_n=5, ensemble="exact", progress=False
    )
    ens = c.meta["ensemble"]
    assert ens["methods"] == ["eap", "exact"]
    assert set(ens["all_agree"]) == planted_terms() and ens["jaccard"]["eap|exact"] == 1.0
    flat = cf.discover(model, task, method="eap", top_n=5, progress=False)
    with pytest.raises(InputError, match="same position columns"):
        agreement({"positions": c, "flat": flat})
