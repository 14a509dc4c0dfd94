"""Steering, directional ablation and weight orthogonalization."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import circuitfind as cf
from circuitfind.inspect.steer import (
    compare_generations,
    directional_ablation,
    generate,
    orthogonalize_weights,
    steering,
    steering_vector,
)
from tests.factories import VOCAB, make_hf_model


def test_steering_is_removed_after_the_block_even_on_error():
    model = cf.load(make_hf_model("gpt2"))
    tokens = torch.randint(0, VOCAB, (2, 6))
    with torch.no_grad():
        before = model(tokens)
        vec = torch.randn(model.cfg.d_model)
        with steering(model, vec, layer=1, coeff=4.0):
            steered = model(tokens)
            _, cache = model.run_with_cache(tokens)  # the cache sees the steered stream too
        torch.testing.assert_close(cache.resid_pre[1], cache.resid_pre[1])
        with pytest.raises(RuntimeError), steering(model, vec, layer=1, coeff=4.0):
            raise RuntimeError("boom")
        after = model(tokens)
    assert not torch.allclose(before, steered, atol=1e-3)
    torch.testing.assert_close(before, after, atol=0, rtol=0)
    assert "_run" not in model.__dict__


def test_steering_only_at_chosen_positions():
    model = cf.load(make_hf_model("llama-gqa-llama3rope"))
    tokens = torch.randint(0, VOCAB, (1, 6))
    with torch.no_grad():
        before = model(tokens)
        with steering(model, torch.randn(48), layer=2, coeff=5.0, positions=[-1]):
            after = model(tokens)
    torch.testing.assert_close(before[:, :-1], after[:, :-1])
    assert not torch.allclose(before[:, -1], after[:, -1], atol=1e-3)


def test_difference_of_means_steers_towards_the_positive_token():
    model = cf.load(make_hf_model("gpt2", seed=1))
    gen = torch.Generator().manual_seed(0)
    a, b = 7, 30
    prefix = torch.randint(0, VOCAB, (16, 5), generator=gen)
    pos = torch.cat([prefix, torch.full((16, 1), a)], 1)
    neg = torch.cat([prefix, torch.full((16, 1), b)], 1)
    vec = steering_vector(model, pos, neg, layer=2)
    neutral = torch.randint(0, VOCAB, (16, 6), generator=gen)
    with torch.no_grad():
        base = model(neutral)[:, -1].log_softmax(-1)
        with steering(model, vec, layer=2, coeff=1.0, positions=-1):
            steered = model(neutral)[:, -1].log_softmax(-1)
    # the distribution moves in the intended direction: towards what follows a, away from b
    target = (model(pos)[:, -1] - model(neg)[:, -1]).mean(0).detach()
    shift = (steered - base).mean(0)
    assert float(torch.nn.functional.cosine_similarity(shift, target, dim=0)) > 0.5
    out = compare_generations(model, neutral[:1], vec, layer=2, coeffs=(0.0, 3.0), max_new_tokens=4)
    assert set(out) == {0.0, 3.0} and all(len(v) == 4 for v in out.values())
    assert generate(model, neutral[:1], max_new_tokens=3).shape == (1, 9)


@pytest.mark.parametrize("family", ["gpt2-odd", "llama-mha-bias-linear-rope", "gpt_neox-parallel"])
def test_orthogonalization_removes_the_direction_from_every_write(family, tmp_path):
    hf = make_hf_model(family)
    model = cf.load(hf)
    d = torch.randn(model.cfg.d_model)
    d = d / d.norm()
    tokens = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad(), directional_ablation(model, d):
        ablated = model(tokens)
    out = orthogonalize_weights(model, d, tmp_path / "ortho")
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    # no write has a component along d: embedding, every head, every b_O, every MLP
    assert float((cache.input @ d).abs().max()) < 1e-4
    for layer in range(model.cfg.n_layers):
        assert float((cache.heads[layer] @ d).abs().max()) < 1e-4
        assert float((cache.mlps[layer] @ d).abs().max()) < 1e-4
        if cache.attn_bias[layer] is not None:
            assert float((cache.attn_bias[layer] @ d).abs()) < 1e-5
    if not hf.config.tie_word_embeddings:  # then orthogonalizing equals ablating at inference
        torch.testing.assert_close(logits, ablated, atol=1e-4, rtol=1e-4)
    # the saved directory loads in plain transformers and matches
    assert out is not None
    reloaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens).logits, logits, atol=1e-4, rtol=1e-4)
