"""The canonical model equals Hugging Face, layer by layer, for every family and odd configs."""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from tests.factories import VOCAB, make_hf_model

ATOL = 1e-4


def _hf_logits(hf, tokens, attention_mask=None, position_ids=None):
    with torch.no_grad():
        return hf(tokens, attention_mask=attention_mask, position_ids=position_ids).logits


def test_logits_and_every_residual_stream_match_hf(family_config):
    _, hf = family_config
    model = cf.load(hf)
    tokens = torch.randint(0, VOCAB, (3, 13))
    with torch.no_grad():
        out = hf(tokens, output_hidden_states=True)
        logits, cache = model.run_with_cache(tokens)
    assert logits.shape == (3, 13, VOCAB)
    torch.testing.assert_close(logits, out.logits, atol=ATOL, rtol=0)
    # Layer by layer, so that two errors cannot cancel.
    for layer in range(model.cfg.n_layers):
        torch.testing.assert_close(
            cache.resid_pre[layer], out.hidden_states[layer], atol=ATOL, rtol=0
        )
    torch.testing.assert_close(
        model.final_norm(cache.resid_final), out.hidden_states[-1], atol=ATOL, rtol=0
    )
    # The logits are not trivially flat: a bug in masking or rotary would show.
    assert out.logits.std() > 0.5


def test_forward_does_not_run_the_hf_modules(family_config):
    """Parity cannot come from comparing HF with itself: our forward never calls HF modules."""
    _, hf = family_config
    model = cf.load(hf)
    calls = []
    # HF's rotary modules are the one part we call (they own the RoPE scaling rules).
    modules = [m for m in hf.modules() if "Rotary" not in type(m).__name__]
    handles = [m.register_forward_hook(lambda *a: calls.append(1)) for m in modules]
    tokens = torch.randint(0, VOCAB, (2, 7))
    try:
        with torch.no_grad():
            model(tokens)
            ours = len(calls)
            hf(tokens)
    finally:
        for h in handles:
            h.remove()
    assert ours == 0
    assert len(calls) > 10


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_unpadded_prompts(family_config, side):
    _, hf = family_config
    model = cf.load(hf)
    lengths = [11, 6, 9]
    seqs = [torch.randint(0, VOCAB, (n,)) for n in lengths]
    T = max(lengths)
    tokens = torch.zeros(len(seqs), T, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(T - len(s), T) if side == "left" else slice(0, len(s))
        tokens[i, sl] = s
        mask[i, sl] = 1
    with torch.no_grad():
        batched = model(tokens, attention_mask=mask)
    # Same positions as HF would use in generation: count real tokens.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    hf_batched = _hf_logits(hf, tokens, mask, positions)
    for i, s in enumerate(seqs):
        sl = slice(T - len(s), T) if side == "left" else slice(0, len(s))
        single = _hf_logits(hf, s[None])[0]
        torch.testing.assert_close(batched[i, sl], single, atol=ATOL, rtol=0)
        torch.testing.assert_close(batched[i, sl], hf_batched[i, sl], atol=ATOL, rtol=0)
        assert torch.isfinite(batched[i]).all()


def test_explicit_position_ids_reproduce_hf_on_a_left_padded_batch(family_config):
    """HF's forward without position_ids numbers padding too; passing the same ids to ours
    gives HF's logits on every real token, whatever the family's positional scheme."""
    _, hf = family_config
    model = cf.load(hf)
    tokens = torch.randint(0, VOCAB, (3, 10))
    mask = torch.ones_like(tokens)
    mask[1, :4] = 0
    mask[2, :1] = 0
    with torch.no_grad():
        ours = model(tokens, attention_mask=mask, position_ids=torch.arange(10))
        reference = _hf_logits(hf, tokens, mask)
        shifted = _hf_logits(hf, tokens, mask, torch.arange(3, 13)[None].expand(3, 10))
        ours_shifted = model(tokens, attention_mask=mask, position_ids=torch.arange(3, 13))
    real = mask.bool()
    torch.testing.assert_close(ours[real], reference[real], atol=ATOL, rtol=0)
    torch.testing.assert_close(ours_shifted[real], shifted[real], atol=ATOL, rtol=0)
    with pytest.raises(cf.InputError, match="position_ids"):
        model(tokens, position_ids=torch.arange(9))


def test_residual_stream_is_the_sum_of_node_outputs(family_config):
    _, hf = family_config
    model = cf.load(hf)
    tokens = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    total = cache.input.clone()
    post = model.cfg.post_norms
    for layer in range(model.cfg.n_layers):
        torch.testing.assert_close(cache.resid_pre[layer], total, atol=ATOL, rtol=0)
        heads = cache.heads[layer].sum(2)
        if post:  # the layer writes postnorm(sum of its heads + b_O): not a sum over heads
            b_O = model.w.layers[layer].b_O
            pre = heads + b_O if b_O is not None else heads
            torch.testing.assert_close(cache.attn_pre[layer], pre, atol=ATOL, rtol=0)
            written = model.post_attn(layer, pre)
            torch.testing.assert_close(cache.attn_post[layer], written, atol=ATOL, rtol=0)
            assert cache.attn_bias[layer] is None
            assert not torch.allclose(written, pre, atol=1e-2)
            total = total + written
        else:
            bias = cache.attn_bias[layer]
            total = total + heads + (bias if bias is not None else 0)
        if not model.cfg.parallel_attn_mlp:
            torch.testing.assert_close(cache.resid_mid[layer], total, atol=ATOL, rtol=0)
        total = total + cache.mlps[layer]
    torch.testing.assert_close(cache.resid_final, total, atol=ATOL, rtol=0)
    if post:
        return
    # Stacked node outputs plus the constant biases also give the final stream.
    stacked = cache.node_outputs().sum(0) + cache.constant(model.cfg.n_layers)
    torch.testing.assert_close(stacked, cache.resid_final, atol=ATOL, rtol=0)
    graph = cf.Graph.from_model(model)
    assert cache.node_outputs().shape[0] == graph.n_senders
    torch.testing.assert_close(cache["L1H1"], cache.heads[1][:, :, 1])
    torch.testing.assert_close(cache["m1"], cache.mlps[1])


def test_per_head_inputs_equal_shared_input_and_do_not_leak_across_kv_groups():
    hf = make_hf_model("llama-gqa-llama3rope")
    model = cf.load(hf)
    tokens = torch.randint(0, VOCAB, (2, 8))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        ctx = model.context(model.check_tokens(tokens))
        x = cache.resid_pre[1]
        shared, _ = model.attention(1, x, x, x, ctx)
        per_head = x.unsqueeze(2).expand(-1, -1, model.cfg.n_heads, -1)
        split, _ = model.attention(1, per_head, per_head, per_head, ctx)
        torch.testing.assert_close(split, shared, atol=ATOL, rtol=0)
        # Change only head 0's key input: heads 1 and 2 share head 0's kv group and must not move.
        assert model.cfg.group_size == 3
        k_in = per_head.clone()
        k_in[:, :, 0] = torch.randn_like(k_in[:, :, 0])
        patched, _ = model.attention(1, per_head, k_in, per_head, ctx)
    assert not torch.allclose(patched[:, :, 0], shared[:, :, 0], atol=1e-3)
    torch.testing.assert_close(patched[:, :, 1:], shared[:, :, 1:], atol=ATOL, rtol=0)


def test_weights_are_views_of_the_hf_parameters(family_config):
    _, hf = family_config
    model = cf.load(hf)
    hf_ptrs = {p.untyped_storage().data_ptr() for p in hf.parameters()}
    for lw in model.w.layers:
        for t in (lw.W_Q, lw.W_K, lw.W_V, lw.W_O, lw.W_in, lw.W_out, lw.ln1_w, lw.q_norm_w):
            assert t is None or t.untyped_storage().data_ptr() in hf_ptrs
    assert model.w.W_U.untyped_storage().data_ptr() in hf_ptrs
    tokens = torch.randint(0, VOCAB, (1, 5))
    before = model(tokens).detach().clone()
    with torch.no_grad():
        next(hf.parameters()).mul_(0.0)  # the token embedding: shared storage, so ours moves too
    after = model(tokens).detach()
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, _hf_logits(hf, tokens), atol=ATOL, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "name",
    [
        "gpt2",
        "llama-gqa-llama3rope",
        "gpt_neox-parallel",
        "qwen3-gqa-untied",
        "gemma-mqa",
        "gemma2-softcap-sliding",
        "gemma3_text",
        "olmo2-gqa",
        "phi3-partial-longrope",
        "gptj",
    ],
)
def test_half_precision_runs_and_stays_close(name, dtype):
    reference = cf.load(make_hf_model(name))
    model = cf.load(make_hf_model(name), dtype=dtype)
    assert model.dtype == dtype
    tokens = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        ref = reference(tokens)
        low = model(tokens)
        hf_low = model.hf_model(tokens).logits
    assert low.dtype == dtype
    scale = ref.abs().max().item()
    # half precision's own error (HF's half model is as far from float32: gemma2 in bf16 9%)
    assert (low.float() - ref).abs().max().item() < 0.12 * scale
    assert (low.float() - hf_low.float()).abs().max().item() < 0.08 * scale


@pytest.mark.parametrize("name", ["gemma2-softcap-sliding", "olmo2-gqa", "qwen3-gqa-untied"])
@pytest.mark.parametrize("saved", [torch.bfloat16, torch.float16])
def test_a_half_precision_checkpoint_loads_in_the_dtype_asked_for(tmp_path, name, saved):
    """A checkpoint directory saved in bf16/fp16 loads and runs in float32 or in its own half
    dtype, as chosen by ``dtype=`` (the identities are tested in float32)."""
    hf = make_hf_model(name).to(saved)
    hf.save_pretrained(tmp_path)
    tokens = torch.randint(0, VOCAB, (2, 8))
    for compute in (torch.float32, saved):
        model = cf.load(str(tmp_path), dtype=compute)
        assert model.dtype == compute and model.hf_model.dtype == compute
        with torch.no_grad():
            ours = model(tokens)
            theirs = model.hf_model(tokens).logits
        assert ours.dtype == compute and torch.isfinite(ours).all()
        scale = theirs.abs().max().item()
        tol = 1e-4 if compute == torch.float32 else 0.08 * scale
        assert (ours.float() - theirs.float()).abs().max().item() <= tol
    # float32 compute of the half weights: the same numbers as the half model, upcast
    up = cf.load(str(tmp_path), dtype="float32")
    assert up.w.W_E.dtype == torch.float32
    torch.testing.assert_close(up.w.W_E, hf.get_input_embeddings().weight.float())


def test_context_window_masks_follow_the_config():
    model = cf.load(make_hf_model("qwen2-sliding-mqa"))
    assert model.cfg.window == (None, 4, 4)  # layers >= max_window_layers slide
    neo = cf.load(make_hf_model("gpt_neo"))
    assert neo.cfg.window == (None, 4, 4)
    assert neo.cfg.attn_scale == (1.0, 1.0, 1.0)


def test_tokens_outside_the_vocabulary_are_a_clear_error():
    model = cf.load(make_hf_model("gpt2"))
    tokens = torch.tensor([[1, 2, VOCAB + 5]])
    with pytest.raises(cf.InputError, match=r"token id 106 at batch 0, position 2.*vocabulary"):
        model(tokens)
    with pytest.raises(cf.InputError, match="longer than the model's context"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_unknown_family_names_the_supported_ones():
    from transformers import OPTConfig, OPTForCausalLM

    hf = OPTForCausalLM(
        OPTConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            ffn_dim=32,
            word_embed_proj_dim=16,
        )
    )
    supported = (
        "gemma, gemma2, gemma3_text, gpt2, gpt_neo, gpt_neox, gptj, llama, mistral, olmo2, "
        "phi3, qwen2, qwen3"
    )
    with pytest.raises(cf.UnsupportedModelError, match=rf"'opt'.*{supported}$"):
        cf.load(hf)


def test_unreachable_hub_name_says_so(tmp_path):
    import os
    import subprocess
    import sys

    code = (
        "import circuitfind as cf\n"
        "try:\n    cf.load('no-such-org/no-such-model')\n"
        "except cf.ModelLoadError as e:\n    print('OK', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.stdout.startswith("OK"), out.stderr[-2000:]
    assert "could not be reached" in out.stdout
    with pytest.raises(cf.ModelLoadError, match="does not exist"):
        cf.load(str(tmp_path / "missing" / "dir"))


def test_load_from_a_local_directory_round_trips(tmp_path):
    hf = make_hf_model("gpt2")
    hf.save_pretrained(tmp_path)
    model = cf.load(str(tmp_path))
    tokens = torch.randint(0, VOCAB, (2, 6))
    torch.testing.assert_close(model(tokens), _hf_logits(hf, tokens), atol=ATOL, rtol=0)


def test_cache_size_is_stated_correctly():
    model = cf.load(make_hf_model("gpt2"))
    tokens = torch.randint(0, VOCAB, (2, 9))
    _, cache = model.run_with_cache(tokens, z=True)
    stored = cache.input.numel() + sum(t.numel() for t in cache.heads + cache.mlps + cache.z)
    stored += sum(t.numel() for t in cache.resid_pre + cache.resid_mid) + cache.resid_final.numel()
    assert cf.cache_bytes(model.cfg, 2, 9) == stored * 4


def test_hooks_fire_and_replace_values():
    model = cf.load(make_hf_model("gpt2"))
    tokens = torch.randint(0, VOCAB, (2, 7))
    seen = []

    def record(x):
        seen.append(x.shape)
        return x

    base = model(tokens)
    same = model(tokens, hooks={p: record for p in model.hook_points()})
    torch.testing.assert_close(same, base)
    assert len(seen) == len(model.hook_points())
    # Zeroing the final stream leaves only the final norm's bias through the unembedding.
    zeroed = model(tokens, hooks={"resid_final": torch.zeros_like})
    expected = model.unembed(torch.zeros(1, 1, model.cfg.d_model))
    torch.testing.assert_close(zeroed, expected.expand_as(zeroed), atol=1e-5, rtol=0)
    with pytest.raises(cf.InputError, match="unknown hook point"):
        model(tokens, hooks={"resid_pre.99": record})


def test_installed_hooks_nest_compose_and_always_come_off():
    model = cf.load(make_hf_model("gpt2"))
    tokens = torch.randint(0, VOCAB, (1, 5))
    base = model(tokens)
    double = {"resid_final": lambda x: 2 * x}
    plus = {"resid_final": lambda x: x + 1}
    with model.hooked(double):
        with model.hooked(plus):
            nested = model(tokens, hooks={"resid_final": lambda x: x * 3})
        only_double = model(tokens)
    # (2x + 1) * 3, in installation order, then the call's own hook
    expected = model(tokens, hooks={"resid_final": lambda x: (2 * x + 1) * 3})
    torch.testing.assert_close(nested, expected)
    torch.testing.assert_close(only_double, model(tokens, hooks=double))
    with pytest.raises(RuntimeError), model.hooked(double):
        raise RuntimeError("boom")
    torch.testing.assert_close(model(tokens), base)
    cache = model.cache(tokens)
    logits, full = model.run_with_cache(tokens)
    torch.testing.assert_close(cache.resid_final, full.resid_final)
    torch.testing.assert_close(model.unembed(cache.resid_final), logits)


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa-llama3rope", "qwen2-sliding-mqa"])
def test_a_subset_of_heads_equals_those_heads_of_the_full_layer(name):
    model = cf.load(make_hf_model(name))
    tokens = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        ctx = model.context(model.check_tokens(tokens))
        x = cache.resid_pre[1]
        full, _ = model.attention(1, x, x, x, ctx)
        subset = [model.cfg.n_heads - 1, 0]
        part, _ = model.attention(1, x, x, x, ctx, heads=subset)
        torch.testing.assert_close(part, full[:, :, subset], atol=1e-5, rtol=0)
        per_head = x.unsqueeze(2).expand(-1, -1, 2, -1)
        part2, _ = model.attention(1, per_head, x, per_head, ctx, heads=subset)
        torch.testing.assert_close(part2, full[:, :, subset], atol=1e-5, rtol=0)


def test_attention_at_per_row_query_positions_equals_the_full_pattern(family_config):
    _, hf = family_config
    model = cf.load(hf)
    tokens = torch.randint(0, VOCAB, (3, 9))
    mask = torch.ones_like(tokens)
    mask[0, 6:] = 0  # right padding: each row reads out at its own last real token
    mask[2, :2] = 0  # left padding
    readout = torch.tensor([5, 8, 8])
    with torch.no_grad():
        ctx = model.context(tokens, mask)
        x = model.embed(tokens, ctx)
        for layer in range(model.cfg.n_layers):
            full, _ = model.attention(layer, x, x, x, ctx)
            rows, _ = model.attention(layer, x, x, x, ctx, q_index=readout[:, None])
            shared, _ = model.attention(layer, x, x, x, ctx, q_index=torch.tensor([8]))
            torch.testing.assert_close(
                rows[:, 0], full[torch.arange(3), readout], atol=1e-5, rtol=0
            )
            torch.testing.assert_close(shared[:, 0], full[:, 8], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["olmo2-gqa", "qwen3-gqa-untied", "gemma3_text"])
def test_qk_norms_keep_each_receiver_to_its_own_head(name):
    """With q/k norms (per head, or OLMo-2's over the whole projection) a per-head input gives
    the shared result, and changing one head's query input moves that head only; its query is
    HF's q_norm(q_proj(x)) of its own input, head h's slice."""
    hf = make_hf_model(name)
    model = cf.load(hf)
    tokens = torch.randint(0, VOCAB, (2, 8))
    H = model.cfg.n_heads
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        ctx = model.context(model.check_tokens(tokens))
        x = cache.resid_pre[1]
        shared, _ = model.attention(1, x, x, x, ctx)
        per_head = x.unsqueeze(2).expand(-1, -1, H, -1).clone()
        split, _ = model.attention(1, per_head, per_head, per_head, ctx)
        torch.testing.assert_close(split, shared, atol=ATOL, rtol=0)
        q_in = per_head.clone()
        q_in[:, :, 0] = torch.randn_like(q_in[:, :, 0])
        patched, _ = model.attention(1, q_in, per_head, per_head, ctx)
        assert not torch.allclose(patched[:, :, 0], shared[:, :, 0], atol=1e-3)
        torch.testing.assert_close(patched[:, :, 1:], shared[:, :, 1:], atol=ATOL, rtol=0)
        # head 0's normalised query from its own input, against HF's modules
        attn = hf.model.layers[1].self_attn
        ln = getattr(hf.model.layers[1], "input_layernorm", None)
        y = ln(q_in[:, :, 0]) if ln is not None else q_in[:, :, 0]
        dh = model.cfg.d_head
        if model.cfg.qk_norm == "full":
            q_hf = attn.q_norm(attn.q_proj(y))[..., :dh]
        else:
            q_hf = attn.q_norm(attn.q_proj(y).view(*y.shape[:2], H, dh))[:, :, 0]
        lw = model.w.layers[1]
        ours = model._project(
            model.norm(q_in, lw.ln1_w, lw.ln1_b, lw.ln1_eps), lw.W_Q, lw.b_Q, True, kv=False
        )
        if model.cfg.qk_norm == "full":
            ours = ours * model._qk_rms(1, model.norm(q_in, lw.ln1_w, lw.ln1_b, lw.ln1_eps), "q")
            ours = ours * lw.q_norm_w.view(H, dh)
        else:
            ours = model.norm(ours, lw.q_norm_w, None, lw.qk_norm_eps)
        torch.testing.assert_close(ours[:, :, 0], q_hf, atol=ATOL, rtol=0)


def test_parallel_families_have_no_edge_from_a_layers_heads_to_its_mlp():
    """GPT-J's MLP reads ln_1 of the stream its heads read: a0.h* -> m0 is no edge."""
    model = cf.load(make_hf_model("gptj"))
    assert model.cfg.parallel_attn_mlp and model.cfg.rotary_interleaved
    graph = cf.Graph.from_model(model)
    names = set(graph.edges)
    assert "a0.h1->m1" in names and "m0->m1" in names
    assert not any(name.endswith("->m0") and name.startswith("a0.") for name in names)
    assert "input->m0" in names


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa-llama3rope"])  # layer norm, RMS norm
def test_norm_in_place_and_head_major_equal_the_plain_norm(name) -> None:
    model = cf.load(make_hf_model(name))
    lw = model.w.layers[0]
    x = torch.randn(5, 2, 3, model.cfg.d_model)  # [head, b, p, d] in memory
    want = model.norm(x.contiguous(), lw.ln1_w, lw.ln1_b, lw.ln1_eps).permute(1, 2, 0, 3)
    view = x.permute(1, 2, 0, 3)  # [b, p, head, d], head-major
    torch.testing.assert_close(model.norm(view, lw.ln1_w, lw.ln1_b, lw.ln1_eps), want)
    got = model.norm_(view, lw.ln1_w, lw.ln1_b, lw.ln1_eps)
    assert got.data_ptr() == x.data_ptr()  # written over its input
    torch.testing.assert_close(got, want)


def test_gelu_new_is_the_fused_tanh_gelu() -> None:
    from transformers.activations import ACT2FN

    from circuitfind.families.common import act_fn

    x = torch.linspace(-12, 12, 100_001)
    torch.testing.assert_close(act_fn("gelu_new")(x), ACT2FN["gelu_new"](x), atol=1e-6, rtol=1e-6)
