"""The EAP-IG agreement suite: its rank statistics against scipy, and a tiny end-to-end run."""

from __future__ import annotations

import json

import pytest
import torch
from scipy.stats import spearmanr

from circuitfind.bench import agreement


def test_agreement_is_spearman_and_top_k_overlap():
    g = torch.Generator().manual_seed(0)
    exact = torch.randn(6, 5, generator=g)
    other = exact + 0.5 * torch.randn(6, 5, generator=g)
    exact[0, 0] = exact[0, 1] = 0.0  # ties get average ranks
    valid = torch.rand(6, 5, generator=g) > 0.2
    out = agreement.agreement(exact, other, valid, top_pct=20)
    want = spearmanr(exact[valid].numpy(), other[valid].numpy()).statistic
    assert out["spearman"] == pytest.approx(float(want), abs=1e-12)
    k = out["k"]
    assert k == max(1, round(int(valid.sum()) * 0.2))
    top = set(exact[valid].abs().topk(k).indices.tolist())
    assert out["top_k"] == len(top & set(other[valid].abs().topk(k).indices.tolist())) / k
    assert agreement.agreement(exact, exact, valid)["spearman"] == pytest.approx(1.0)


def test_minimal_pairs_differ_in_a_few_tokens_and_never_the_last():
    task = agreement.minimal_pairs(10, 8, seed=3)
    changed = task.clean != task.corrupted
    assert (changed.sum(1) == agreement.N_SWAPPED).all()
    assert not changed[:, -1].any()


def test_every_family_builds_and_loads():
    import circuitfind as cf

    for family in agreement.FAMILIES:
        model = cf.load(agreement.random_family_model(family, seed=0))
        assert cf.Graph.from_model(model).n_edges > 0


@pytest.mark.slow
def test_quick_run_writes_a_stamped_report(tmp_path):
    out = agreement.run(tmp_path, quick=True, seed=0)
    md = (tmp_path / "eap_ig_agreement.md").read_text()
    data = json.loads((tmp_path / "eap_ig_agreement.json").read_text())
    assert "Every number below comes from" in md and "± " in md
    assert set(data["cases"]) == {f"random {f}" for f in agreement.FAMILIES} | {
        s for s, _ in agreement.ZOO
    }
    assert out["files"]["markdown"].endswith("eap_ig_agreement.md")
