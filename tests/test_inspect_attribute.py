"""Input attribution: completeness of integrated gradients, and the other methods' basics."""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from circuitfind.inspect.attribute import _embedding, attribute, embed_metric, logit_metric
from tests.factories import VOCAB, make_hf_model


def _gap(model, tokens, metric, baseline_token=0):
    """metric(input) − metric(baseline input)."""
    x = _embedding(model, tokens, None)
    x0 = _embedding(model, torch.full_like(tokens, baseline_token), None)
    with torch.no_grad():
        return embed_metric(model, tokens, None, metric, x) - embed_metric(
            model, tokens, None, metric, x0
        )


@pytest.mark.parametrize("family", ["gpt2", "llama-gqa-llama3rope", "gpt_neox-parallel"])
def test_integrated_gradients_is_complete(family):
    model = cf.load(make_hf_model(family, scale=0.1))
    tokens = torch.randint(0, VOCAB, (2, 6))
    scores = attribute(model, tokens, answer=3, wrong=9, method="integrated_gradients", steps=64)
    assert scores.shape == (2, 6)
    gap = _gap(model, tokens, logit_metric(model, tokens, 3, 9))
    tol = 0.01 * float(gap.abs().max()) + 1e-3
    torch.testing.assert_close(scores.sum(-1), gap, atol=tol, rtol=0)


def test_shap_efficiency_and_the_other_methods():
    model = cf.load(make_hf_model("gpt2", scale=0.1))
    tokens = torch.randint(0, VOCAB, (2, 5))
    gap = _gap(model, tokens, logit_metric(model, tokens, 4))
    shap = attribute(model, tokens, 4, method="shap", n_samples=4)
    torch.testing.assert_close(shap.sum(-1), gap, atol=1e-4, rtol=1e-4)  # exact per permutation
    for method in ("gradient", "grad_x_input", "occlusion"):
        s = attribute(model, tokens, 4, method=method)
        assert s.shape == (2, 5) and torch.isfinite(s).all()
    roll = attribute(model, tokens, method="rollout")
    torch.testing.assert_close(roll.sum(-1), torch.ones(2))


def test_attribution_of_a_padded_row_is_zero_at_padding_and_unknown_method_is_an_error():
    model = cf.load(make_hf_model("qwen2"))
    tokens = torch.randint(0, VOCAB, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, 4:] = 0
    s = attribute(model, tokens, 5, method="occlusion", attention_mask=mask, baseline=0)
    assert float(s[0, 4:].abs().max()) == 0.0
    with pytest.raises(cf.InputError, match="choose from"):
        attribute(model, tokens, 5, method="lime")
