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


# ----------------------------------------------------------------------------- evaluation data
def _identity_sae(d: int) -> SAE:
    """Perfect reconstruction: f = relu([x, -x]), x̂ = f @ [I; -I] = x."""
    sae = SAE(SAEConfig(d, 2 * d, "standard"))
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([torch.eye(d), -torch.eye(d)], 1))
        sae.W_dec.copy_(torch.cat([torch.eye(d), -torch.eye(d)], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def _zero_sae(d: int) -> SAE:
    """Reconstructs every activation as 0 (what zero-ablation puts there)."""
    sae = SAE(SAEConfig(d, 2 * d, "standard"))
    with torch.no_grad():
        for p in sae.parameters():
            p.zero_()
    return sae


@pytest.fixture(scope="module")
def induction():
    torch.set_num_threads(1)
    return cf.load("zoo:induction-2l")


def test_zoo_default_data_is_its_generator_with_the_training_loss(induction):
    from circuitfind.inspect.sae import evaluation_data
    from circuitfind.zoo.recipe import get_recipe

    ev = evaluation_data(induction, n=24, seed=3)
    tokens, weight = get_recipe("induction-2l").sampler(None)(torch.Generator().manual_seed(3), 24)
    assert torch.equal(ev.tokens, tokens) and torch.equal(ev.loss_weight, weight)
    assert "training generator" in ev.source
    m = splice_metrics(
        induction, _identity_sae(induction.cfg.d_model), ev.tokens, "resid_pre.1",
        loss_weight=ev.loss_weight,
    )  # fmt: skip
    # loss_clean is the recipe's training loss, computed here on the HF model itself
    with torch.no_grad():
        logits = induction.hf_model(tokens).logits[:, :-1].float()
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none"
    ).view_as(weight)
    reference = float((ce * weight).sum() / weight.sum())
    assert m["loss_clean"] == pytest.approx(reference, rel=1e-4)
    # on its own data zero-ablating resid_pre.1 raises the loss, so "recovered" is defined
    assert m["loss_zero"] > m["loss_clean"] + 0.5
    assert m["loss_recovered"] == pytest.approx(1.0, abs=1e-4) and m["loss_recovered_note"] == ""
    assert m["seconds_per_batch"] > 0


@pytest.mark.parametrize("site", ["resid_pre.1", "a1.h0"])
def test_loss_recovered_is_one_for_a_perfect_sae_and_zero_for_a_zero_sae(induction, site):
    from circuitfind.inspect.sae import evaluation_data

    ev = evaluation_data(induction, n=16)
    d = induction.cfg.d_model  # a head's site is its output in the residual stream
    kw = {"loss_weight": ev.loss_weight, "batch_size": 5}
    perfect = splice_metrics(induction, _identity_sae(d), ev.tokens, site, **kw)
    zero = splice_metrics(induction, _zero_sae(d), ev.tokens, site, **kw)
    assert perfect["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert zero["loss_recovered"] == pytest.approx(0.0, abs=1e-4)
    assert zero["loss_spliced"] == pytest.approx(zero["loss_zero"], abs=1e-5)
    # batching does not change the numbers
    whole = splice_metrics(induction, _zero_sae(d), ev.tokens, site, loss_weight=ev.loss_weight)
    assert whole["loss_zero"] == pytest.approx(zero["loss_zero"], rel=1e-5)


def test_recovered_is_undefined_when_zeroing_does_not_raise_the_loss(induction):
    from circuitfind.inspect.sae import evaluation_data, format_metrics, loss_recovered

    assert loss_recovered(2.0, 2.5, 3.0) == (0.5, "")
    value, note = loss_recovered(3.0, 2.9, 2.5, "resid_pre.1")
    assert value is None and "does not raise the loss" in note and "resid_pre.1" in note
    # the zoo model's MLPs are zeroed and frozen: zero-ablating m0 changes nothing
    ev = evaluation_data(induction, n=8)
    m = splice_metrics(
        induction, _identity_sae(induction.cfg.d_model), ev.tokens, "m0", loss_weight=ev.loss_weight
    )
    assert m["loss_zero"] == pytest.approx(m["loss_clean"], abs=1e-6)
    assert m["loss_recovered"] is None and "undefined" in m["loss_recovered_note"]
    text = format_metrics(m)
    assert "loss_recovered: undefined: zero-ablating m0" in text and "note" not in text


def test_task_prompts_and_no_data(induction):
    from circuitfind.inspect.sae import evaluation_data

    ev = evaluation_data(induction, task="induction", n=6, seed=1)
    task = cf.get_task("induction", induction, n=6, seed=1)
    assert torch.equal(ev.tokens, task.clean) and ev.loss_weight is None
    model = cf.load(make_hf_model("gpt2"))
    with pytest.raises(cf.InputError, match="--task NAME"):
        evaluation_data(model)
    assert evaluation_data(model, n=3, allow_random=True).tokens.shape == (3, 32)


def test_training_records_its_time_per_step():
    x = torch.randn(256, 6)
    sae = train_sae(x, SAEConfig(6, 12, "topk", k=2), steps=7, batch_size=32)
    stats = evaluate_sae(sae, x)
    assert stats["train_steps"] == 7 and stats["seconds_per_step"] > 0
    assert stats["train_seconds"] == pytest.approx(7 * stats["seconds_per_step"])
