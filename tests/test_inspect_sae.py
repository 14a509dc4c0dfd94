"""SAEs: training reduces the loss, save/load round-trips (SAELens layout), model sites work."""

from __future__ import annotations

import json

import pytest
import torch

import circuitfind as cf
from circuitfind.inspect.sae import (
    SAE,
    SAEConfig,
    evaluate_sae,
    feature_logit_effect,
    site_activations,
    splice_metrics,
    top_activations,
    train_sae,
)
from circuitfind.inspect.toy_superposition import (
    feature_recovery,
    sample_features,
    train_toy_model,
)
from tests.factories import VOCAB, make_hf_model


def test_topk_sae_recovers_toy_features_fast():
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead
    toy = train_toy_model(12, 5, 0.05, steps=400, batch_size=256, lr=1e-2)
    x = sample_features(20_000, 12, 0.05, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h = toy.hidden(x)
    cfg = SAEConfig(d_in=5, d_sae=24, architecture="topk", k=2)
    untrained = SAE(cfg).loss(h[:2000])[0].item()
    sae = train_sae(h, cfg, steps=400, batch_size=256, lr=5e-3)
    assert sae.loss(h[:2000])[0].item() < 0.5 * untrained
    rec = feature_recovery(toy.feature_directions(), sae.W_dec.detach())
    assert float(rec.mean()) > 0.9
    metrics = evaluate_sae(sae, h[:2000])
    assert metrics["l0"] <= 2 and metrics["explained_variance"] > 0.8


@pytest.mark.parametrize("arch", ["standard", "topk"])
def test_save_load_round_trip_in_saelens_layout(arch, tmp_path):
    sae = SAE(SAEConfig(d_in=6, d_sae=10, architecture=arch, hook_name="resid_pre.1"), seed=3)
    path = sae.save(tmp_path / "sae")
    cfg = json.loads((path / "cfg.json").read_text())
    assert {"d_in", "d_sae", "architecture", "hook_name"} <= set(cfg)
    from safetensors.torch import load_file

    state = load_file(str(path / "sae_weights.safetensors"))
    assert state["W_enc"].shape == (6, 10) and state["W_dec"].shape == (10, 6)
    loaded = SAE.load(path)
    x = torch.randn(4, 6)
    torch.testing.assert_close(loaded(x), sae(x))
    with pytest.raises(cf.InputError, match="not an SAE directory"):
        SAE.load(tmp_path)


@pytest.mark.parametrize("site", ["resid_pre.1", "m0", "a1.h2"])
def test_sae_on_model_sites_and_splicing(site):
    model = cf.load(make_hf_model("gpt2"))
    tokens = torch.randint(0, VOCAB, (8, 10))
    acts = torch.cat(list(site_activations(model, tokens, site, batch_size=4)))
    assert acts.shape == (80, 48)
    sae = train_sae(acts, SAEConfig(48, 96, "topk", k=8), steps=50, batch_size=64)
    m = splice_metrics(model, sae, tokens, site)
    assert m["loss_clean"] > 0 and m["kl"] >= 0
    # an identity "SAE" (perfect reconstruction) leaves the loss unchanged
    ident = SAE(SAEConfig(48, 96, "standard"))
    with torch.no_grad():
        ident.W_enc.copy_(torch.cat([torch.eye(48), -torch.eye(48)], 1))
        ident.W_dec.copy_(torch.cat([torch.eye(48), -torch.eye(48)], 0))
        ident.b_enc.zero_()
        ident.b_dec.zero_()
    m2 = splice_metrics(model, ident, tokens, site)
    assert abs(m2["loss_spliced"] - m2["loss_clean"]) < 1e-4 and m2["kl"] < 1e-5
    top = top_activations(model, sae, tokens, site, feature=0, k=3)
    assert len(top) == 3 and top[0]["activation"] >= top[-1]["activation"]
    assert len(feature_logit_effect(model, sae, 0, k=4)["promoted"]) == 4
