"""Bootstrap stability: resampled per-prompt scores equal re-scoring, frequencies are seeded and
find the planted circuit, intervals hold their point, nothing is re-run, JSON round trip."""

from __future__ import annotations

import pytest
import torch

import circuitfind
from circuitfind.bench.planted import ground_truth
from circuitfind.errors import InputError
from circuitfind.methods.eap import score_eap_ig_inputs
from circuitfind.methods.table import METHODS, MethodSpec, register, unregister
from circuitfind.resample import PromptRuns, per_prompt_scores, prompt_additive
from circuitfind.runs import PreparedRuns
from circuitfind.scoring import prepare
from circuitfind.stability import (
    bootstrap,
    default_bootstrap,
    frequency_matrix,
    resolve_bootstrap,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_resampled_eap_ig_equals_rescoring_the_resampled_set(planted) -> None:
    model, task = planted
    runs = prepare(model, task, "resample")
    valid = runs.graph.valid
    per = per_prompt_scores(runs, "eap-ig-inputs", {"steps": 3})
    full = score_eap_ig_inputs(runs, steps=3).edges
    assert torch.allclose(per.mean()[0][valid], full[valid], atol=1e-5)  # mean = the score
    idx = torch.tensor([3, 3, 0, 7, 1, 1, 1, 5])  # a resample, repeats included
    reindexed = per.mean(idx)[0]
    fresh = prepare(model, task[idx.sort().values], "resample")  # new passes: independent
    rescored = score_eap_ig_inputs(fresh, steps=3).edges
    view = score_eap_ig_inputs(PromptRuns(runs, idx), steps=3).edges  # over the parent's caches
    assert float(rescored[valid].abs().max()) > 1.0  # the scores are not trivially zero
    assert torch.allclose(reindexed[valid], rescored[valid], atol=1e-5)
    assert torch.allclose(view[valid], rescored[valid], atol=1e-5)
    assert not torch.allclose(reindexed[valid], full[valid], atol=1e-3)  # it did resample


def test_per_prompt_exact_and_node_average_to_the_method(planted) -> None:
    model, task = planted
    runs = prepare(model, task, "mean")
    for method in ("exact", "node"):
        per = per_prompt_scores(runs, method)
        whole = circuitfind.score(model, task, method=method, ablation="mean", runs=runs)
        ok = runs.graph.valid
        assert torch.allclose(per.mean()[0][ok], whole.score_matrix[ok], atol=1e-5)
        if method == "node":
            nodes = per.mean()[1]
            assert nodes is not None and whole.node_scores is not None
            for k, v in whole.node_scores.items():
                assert nodes[k] == pytest.approx(v, abs=1e-5)


def test_planted_edges_have_frequency_one_and_nothing_else_is_kept(planted) -> None:
    model, task = planted
    c = circuitfind.discover(model, task, method="eap-ig-inputs", top_n=5, bootstrap=6)
    st = c.meta["stability"]
    gt = ground_truth(c.graph, "resample")
    freq = frequency_matrix(c)
    assert freq is not None
    assert torch.equal(freq[gt], torch.ones(int(gt.sum())))
    assert float(freq[~gt].abs().max()) == 0.0
    assert st["contingent"] == [] and sorted(st["core"]) == sorted(c.edge_names)
    assert st["how"] == "per-prompt scores reindexed" and st["n_boot"] == 6
    assert st["circuit_core_share"] == 1.0


def test_frequencies_reproducible_with_a_seed_and_intervals_hold_the_point(planted) -> None:
    model, task = planted
    c = circuitfind.discover(model, task, method="eap-ig-inputs", ablation="mean", top_n=3)
    a = bootstrap(c, 8, seed=3)
    b = bootstrap(c, 8, seed=3)
    other = bootstrap(c, 8, seed=4)
    assert torch.equal(a.frequency, b.frequency)
    assert a.intervals["faithfulness"] == b.intervals["faithfulness"]
    assert a.intervals["faithfulness"] != other.intervals["faithfulness"]  # seeds differ
    f = a.intervals["faithfulness"]
    assert f.n == 8 and f.stderr is not None and f.stderr > 0  # a noisy case, not [1, 1]
    assert f.value == pytest.approx(c.meta["faithfulness"])
    assert f.contains(c.meta["faithfulness"])
    assert a.intervals["n_edges"].contains(c.n_edges)


def test_cpr_cmd_intervals_and_no_new_passes(planted, monkeypatch) -> None:
    model, task = planted
    c = circuitfind.discover(model, task, method="eap", top_n=4, curve=True)
    made = []
    original = PreparedRuns.__init__

    def counting(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        made.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(PreparedRuns, "__init__", counting)
    st = bootstrap(c, 4, seed=0)
    assert made == []  # every resample read the prepared runs
    for key in ("cpr", "cmd"):
        iv = st.intervals[key]
        assert iv.n == 4 and iv.value == pytest.approx(c.meta["evaluation"][key])
        assert iv.contains(iv.value, tol=1e-6)


def test_a_method_without_per_prompt_scores_is_rescored(planted) -> None:
    model, task = planted
    spec = MethodSpec(
        name="toy-eap-ig", summary="EAP-IG under another name", fn=score_eap_ig_inputs
    )
    register(spec)
    try:
        assert not prompt_additive("toy-eap-ig") and default_bootstrap("toy-eap-ig", 10) == 0
        toy = circuitfind.discover(model, task, method="toy-eap-ig", top_n=5, bootstrap=3)
        ref = circuitfind.discover(model, task, method="eap-ig-inputs", top_n=5, bootstrap=3)
    finally:
        unregister("toy-eap-ig")
    assert toy.meta["stability"]["how"] == "re-scored"
    assert toy.meta["stability"]["frequency"] == ref.meta["stability"]["frequency"]
    assert "toy-eap-ig" not in METHODS


def test_default_rule_and_bad_values() -> None:
    assert default_bootstrap("eap-ig-inputs", 5000) == 20
    assert default_bootstrap("eap-ig-inputs", 32_000) == 0  # GPT-2 small: off unless asked
    assert default_bootstrap("exact", 500) == 20
    assert default_bootstrap("exact", 32_000) == 0
    assert default_bootstrap("acdc", 100) == 0
    assert resolve_bootstrap("auto", "eap", 100) == 20
    assert resolve_bootstrap("0", "eap", 100) == 0 and resolve_bootstrap(None, "eap", 1) == 0
    for bad in (1, -2, "many", 2.5):
        with pytest.raises(InputError, match="bootstrap"):
            resolve_bootstrap(bad, "eap", 100)  # type: ignore[arg-type]


def test_stability_round_trips_through_json(planted, tmp_path) -> None:
    model, task = planted
    c = circuitfind.discover(model, task, method="eap", top_n=5, bootstrap=3)
    back = circuitfind.Circuit.from_json(c.to_json(tmp_path / "c.json"))
    assert back.meta["stability"] == c.meta["stability"]
    assert torch.equal(frequency_matrix(back), frequency_matrix(c))  # type: ignore[arg-type]


def test_ensemble_reports_agreement_across_methods(planted) -> None:
    model, task = planted
    c = circuitfind.discover(model, task, method="eap", top_n=5, ensemble="exact, eap-ig")
    ens = c.meta["ensemble"]
    assert ens["methods"] == ["eap", "exact", "eap-ig-inputs"]
    gt = ground_truth(c.graph, "resample")
    names = {c.graph.edge_name(int(i), int(j)) for i, j in gt.nonzero()}
    assert set(ens["all_agree"]) == names  # the planted circuit, by every method
    assert all(v == 1.0 for v in ens["jaccard"].values())
    assert ens["per_method"]["exact"]["n_edges"] == 5


def test_diagram_opacity_is_inclusion_frequency_and_the_report_has_a_section(planted, tmp_path):
    from circuitfind.render import MIN_OPACITY, dot_source, edge_opacity
    from circuitfind.report import write_report

    model, task = planted
    c = circuitfind.discover(model, task, method="eap", ablation="mean", top_n=3, bootstrap=4)
    freq = frequency_matrix(c)
    assert freq is not None
    opacity = edge_opacity(c)
    assert torch.equal(opacity, freq.clamp(min=MIN_OPACITY))
    source = dot_source(c).source
    for name in c.edge_names:
        e = c.graph.edge(name)
        alpha = f"{round(255 * float(opacity[e.sender_index, e.receiver_index])):02x}"
        assert f'{alpha}" ' in source or f'{alpha}"' in source
    assert "bootstrap resamples" in source
    plain = circuitfind.discover(model, task, method="eap", top_n=3)
    assert edge_opacity(plain) is None and "resamples" not in dot_source(plain).source
    text = write_report(c, tmp_path / "r.html").read_text()
    assert "<h2>Stability</h2>" in text and 'id="stability-edges"' in text
    assert "<h2>Stability</h2>" not in write_report(plain, tmp_path / "p.html").read_text()


@pytest.mark.parametrize("start", [1, 3, 7, 40, 110])
def test_the_resamples_target_search_finds_what_the_full_search_finds(planted, start) -> None:
    from circuitfind.search import search_target
    from circuitfind.stability import _selector, search_near

    model, task = planted
    c = circuitfind.score(model, task, method="eap", ablation="mean", progress=False)
    select = _selector(c, greedy=False)
    size = c.graph.n_edges
    for target in (0.5, 0.9, 0.99):
        ref, ref_info = search_target(select, c.runs, target, size)
        got, info = search_near(select, c.runs, target, size, start)
        assert info["n"] == ref_info["n"] and torch.equal(got, ref)


def test_out_of_bag_faithfulness_is_measured_on_the_prompts_left_out(planted) -> None:
    import numpy as np

    model, task = planted
    c = circuitfind.discover(model, task, method="eap", top_n=3)
    st = bootstrap(c, 4, seed=1)
    oob = st.intervals["faithfulness_oob"]
    assert oob.value == pytest.approx(c.meta["faithfulness"]) and oob.n >= 1
    idx = torch.from_numpy(np.random.default_rng(1).integers(0, 8, size=(4, 8)))
    per = per_prompt_scores(c.runs, "eap")
    for r in range(4):
        left = sorted(set(range(8)) - set(idx[r].tolist()))
        if len(left) < 2:
            assert st.replicates["faithfulness_oob"][r] is None
            continue
        edges, _ = per.mean(idx[r])
        rep = circuitfind.Circuit(c.graph, edges, torch.zeros_like(c.graph.valid), dict(c.meta))
        kept = circuitfind.prune(rep, top_n=3)
        kept.runs = None  # measured afresh on the left-out prompts: new passes
        fresh = circuitfind.evaluate(model, task[torch.tensor(left)], kept)
        assert st.replicates["faithfulness_oob"][r] == pytest.approx(fresh.faithfulness, abs=1e-5)
