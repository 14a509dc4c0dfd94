"""Attention patterns and head-role scores."""

from __future__ import annotations

import torch

import circuitfind as cf
from circuitfind.inspect import (
    attention_patterns,
    copying_scores,
    head_pattern_scores,
    head_roles,
    pattern_scores,
    repeated_random_tokens,
)
from tests.factories import VOCAB, make_hf_model


def test_pattern_scores_on_hand_made_patterns():
    seq = 6
    tokens = torch.randint(0, VOCAB, (1, seq))
    tokens = torch.cat([tokens, tokens], 1)  # repeated: [1, 12]
    T = 2 * seq
    prev = torch.zeros(T, T)
    prev[0, 0] = 1
    prev[torch.arange(1, T), torch.arange(T - 1)] = 1
    induction = prev.clone()
    dup = prev.clone()
    for q in range(seq, T):
        induction[q] = 0
        induction[q, q - seq + 1] = 1
        dup[q] = 0
        dup[q, q - seq] = 1
    patterns = torch.stack([prev, induction, dup])[None, None]  # [1 layer, 1 batch, 3 heads, q, k]
    s = pattern_scores(patterns, tokens)
    torch.testing.assert_close(s["previous-token"][0], torch.tensor([1.0, 5 / 11, 5 / 11]))
    torch.testing.assert_close(s["induction"][0], torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(s["duplicate-token"][0], torch.tensor([0.0, 0.0, 1.0]))
    roles = head_roles(s)
    assert roles == {"a0.h0": "previous-token", "a0.h1": "induction", "a0.h2": "duplicate-token"}


def test_patterns_are_causal_distributions_on_gqa():
    model = cf.load(make_hf_model("qwen2-sliding-mqa"))
    pats = attention_patterns(model, torch.randint(0, VOCAB, (2, 9)))
    assert pats.shape == (3, 2, 4, 9, 9)
    torch.testing.assert_close(pats.sum(-1), torch.ones(3, 2, 4, 9))
    assert float(pats.triu(1).abs().max()) == 0.0


def test_head_scores_shapes_and_copying_sign():
    model = cf.load(make_hf_model("gpt2"))
    scores = head_pattern_scores(model, n=4, seq_len=10)
    assert set(scores) == {"previous-token", "duplicate-token", "induction", "copying"}
    for v in scores.values():
        assert v.shape == (3, 4)
        assert float(v.min()) >= -1 - 1e-6 and float(v.max()) <= 1 + 1e-6
    before = copying_scores(model)
    with torch.no_grad():
        model.w.layers[1].W_O.neg_()  # eigenvalues flip sign
    torch.testing.assert_close(copying_scores(model)[1], -before[1], atol=1e-5, rtol=0)
    tokens = repeated_random_tokens(model, n=3, seq_len=8, seed=1)
    assert tokens.shape == (3, 16)
    assert torch.equal(tokens[:, :8], tokens[:, 8:])


def test_an_identity_ov_head_copies():
    """A head whose OV circuit maps each token's embedding back to its own logit scores ~1."""
    hf = make_hf_model("gpt2")
    model = cf.load(hf)
    lw = model.w.layers[0]
    with torch.no_grad():
        # W_O = pinv(diag(lnf) W_U W_E diag(ln1) W_V): the OV circuit is the identity on its span
        w_v = lw.ln1_w[:, None] * lw.W_V[0]
        through = (model.w.lnf_w[:, None] * model.w.W_U) @ model.w.W_E @ w_v  # [d_model, d_head]
        lw.W_O[0].copy_(torch.linalg.pinv(through))
    assert float(copying_scores(model)[0, 0]) > 0.99
