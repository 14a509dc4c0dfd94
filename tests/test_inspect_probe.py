"""Probes find a planted linear feature and stay at chance on shuffled labels."""

from __future__ import annotations

import json

import pytest
import torch

import circuitfind as cf
from circuitfind.inspect.probe import collect_activations, load_labelled, train_probes
from tests.factories import VOCAB, make_hf_model


def _planted(seed=0):
    """A model whose embedding carries a feature along d for the tokens of class 1."""
    model = cf.load(make_hf_model("llama-gqa-llama3rope", seed=seed))
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(model.cfg.d_model, generator=gen)
    d = d / d.norm()
    cls1 = torch.randperm(VOCAB, generator=gen)[: VOCAB // 2]
    with torch.no_grad():
        model.w.W_E[cls1] += 3.0 * d
    tokens = torch.randint(0, VOCAB, (240, 6), generator=gen)
    labels = torch.isin(tokens[:, -1], cls1).long().tolist()
    return model, tokens, labels, d


def test_probe_reads_a_planted_feature_and_not_shuffled_labels():
    model, tokens, labels, d = _planted()
    res = train_probes(model, tokens, labels, sites=["resid_pre.0", "m0"])
    assert res.test_accuracy["resid_pre.0"] > 0.95
    cos = float(res.direction("resid_pre.0") @ d)
    assert cos > 0.5  # towards class 1 = the planted direction (normalisation mixes a little)
    shuffled = torch.tensor(labels)[torch.randperm(len(labels))].tolist()
    res2 = train_probes(model, tokens, shuffled, sites=["resid_pre.0", "resid_pre.2"])
    for site in res2.sites:
        assert abs(res2.test_accuracy[site] - 0.5) < 0.15
    assert set(res.to_dict()) >= {"test_accuracy", "best_site", "chance"}


def test_collect_activations_and_labelled_jsonl(tmp_path):
    model = cf.load(make_hf_model("gpt2"))
    acts = collect_activations(model, torch.randint(0, VOCAB, (5, 4)))
    assert list(acts) == ["resid_pre.0", "resid_pre.1", "resid_pre.2", "resid_final"]
    assert acts["resid_final"].shape == (5, 48)
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"t{i}", "label": i % 2}) for i in range(4)))
    texts, labels = load_labelled(path)
    assert texts[1] == "t1" and labels == [0, 1, 0, 1]
    path.write_text('{"text": "x"}\n')
    with pytest.raises(cf.InputError, match="'label'"):
        load_labelled(path)
