"""Logit lens, tuned lens and DLA: the identities that must hold, on several families."""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from circuitfind.inspect import TunedLens, lens_kl, logit_lens, train_tuned_lens
from tests.factories import VOCAB, make_hf_model

FAMILIES = ["gpt2", "gpt_neox-parallel", "llama-gqa-llama3rope", "qwen2-sliding-mqa", "gpt_neo"]


@pytest.mark.parametrize("family", FAMILIES)
def test_logit_lens_last_layer_is_the_models_log_softmax(family):
    model = cf.load(make_hf_model(family))
    tokens = torch.randint(0, VOCAB, (2, 9))
    lp = logit_lens(model, tokens)
    assert lp.shape == (model.cfg.n_layers + 1, 2, 9, VOCAB)
    with torch.no_grad():
        ref = model(tokens).log_softmax(-1)
    torch.testing.assert_close(lp[-1], ref, atol=1e-5, rtol=1e-5)
    # earlier layers are proper distributions and differ from the last
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(lp.shape[:-1]), atol=1e-4, rtol=0)
    assert not torch.allclose(lp[0], lp[-1], atol=1e-3)


def test_tuned_lens_trains_below_the_logit_lens_and_round_trips(tmp_path):
    model = cf.load(make_hf_model("gpt2"))
    train = torch.randint(0, VOCAB, (32, 12))
    held = torch.randint(0, VOCAB, (8, 12))
    lens = train_tuned_lens(model, train, epochs=15, lr=3e-3)
    kl_plain = lens_kl(model, held)
    kl_tuned = lens_kl(model, held, lens=lens)
    assert kl_tuned[-1] < 1e-6 and kl_plain[-1] < 1e-6
    assert float(kl_tuned[:-1].mean()) < 0.8 * float(kl_plain[:-1].mean())
    loaded = TunedLens.load(lens.save(tmp_path / "lens"))
    torch.testing.assert_close(
        logit_lens(model, held, lens=loaded), logit_lens(model, held, lens=lens)
    )


@pytest.mark.parametrize(
    "family",
    [
        "gpt2",
        "gpt_neox-parallel",
        "llama-mha-bias-linear-rope",
        "qwen2",
        "gpt_neo",
        "gemma-mqa",
        "qwen3-gqa-untied",
        "phi3-sliding-mqa",
        "gptj",
    ],
)
def test_dla_sums_to_the_logit_difference(family):
    model = cf.load(make_hf_model(family))
    tokens = torch.randint(0, VOCAB, (3, 8))
    answer, wrong = torch.tensor([5, 17, 40]), 3
    parts = cf.dla(model, tokens, answer, wrong)
    n = model.cfg.n_layers
    assert len(parts) == 1 + n * (model.cfg.n_heads + 1) + 1
    assert {"input", "a0.h0", "m0", "bias"} <= set(parts)
    total = torch.stack(list(parts.values())).sum(0)
    with torch.no_grad():
        logits = model(tokens)[:, -1]
    actual = logits[torch.arange(3), answer] - logits[:, wrong]
    torch.testing.assert_close(total, actual, atol=1e-4, rtol=1e-4)
    # without `wrong`: the logit itself
    single = torch.stack(list(cf.dla(model, tokens, answer).values())).sum(0)
    torch.testing.assert_close(single, logits[torch.arange(3), answer], atol=1e-4, rtol=1e-4)


def test_dla_reads_the_last_real_token_of_a_padded_batch():
    model = cf.load(make_hf_model("llama-gqa-llama3rope"))
    tokens = torch.randint(0, VOCAB, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    parts = cf.dla(model, tokens, 9, attention_mask=mask)
    total = torch.stack(list(parts.values())).sum(0)
    with torch.no_grad():
        logits = model(tokens, attention_mask=mask)
    torch.testing.assert_close(
        total, torch.stack([logits[0, 6, 9], logits[1, 3, 9]]), atol=1e-4, rtol=0
    )


def test_dla_rejects_a_multi_token_answer_with_a_fix():
    model = cf.load(make_hf_model("gpt2"))
    with pytest.raises(cf.InputError, match="outside the vocabulary"):
        cf.dla(model, torch.randint(0, VOCAB, (1, 4)), 10_000)


def test_dla_refuses_a_readout_that_does_not_add_up():
    """Post-norms and soft-capped logits break DLA's sum: refused, not silently wrong."""
    model = cf.load(make_hf_model("gemma2-softcap-sliding"))
    with pytest.raises(cf.InputError, match="does not add up"):
        cf.dla(model, torch.zeros(1, 4, dtype=torch.long), 1, 2)
