"""The patching engine's identities and exactness against independent recomputations."""

from __future__ import annotations

import random

import pytest
import torch

import circuitfind as cf
from circuitfind.patching import Ablation, masked_forward
from circuitfind.runs import PreparedRuns
from circuitfind.tasks import Task
from tests.factories import FAMILY_CONFIGS, VOCAB, make_hf_model, method_scores


def _random_task(n=6, T=7, seed=0, padded=False):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, VOCAB, (n, T), generator=g)
    corrupted = torch.randint(0, VOCAB, (n, T), generator=g)
    answer = torch.randint(0, VOCAB, (n,), generator=g)
    wrong = torch.randint(0, VOCAB, (n,), generator=g)
    if not padded:
        return Task.from_tokens(clean, corrupted, answer=answer, wrong=wrong)
    lengths = [T, T - 2, T - 1, T - 3, T, T - 1][:n]
    return Task.from_tokens(
        [c[:k].tolist() for c, k in zip(clean, lengths)],
        [c[:k].tolist() for c, k in zip(corrupted, lengths)],
        answer=answer,
        wrong=wrong,
    )


@pytest.mark.parametrize("padded", [False, True])
def test_all_edges_in_is_clean_and_all_out_is_corrupted(family_config, padded):
    _, hf = family_config
    model = cf.load(hf)
    graph = cf.Graph.from_model(model)
    task = _random_task(padded=padded)
    ev = PreparedRuns(model, task, "resample", batch_size=4).evaluator()
    full = graph.valid.float()
    clean = task.metric_fn(task.run(model, "clean"), reduce="none")
    corrupted = task.metric_fn(task.run(model, "corrupted"), reduce="none")
    torch.testing.assert_close(ev.per_prompt(full), clean, atol=1e-4, rtol=0)
    torch.testing.assert_close(ev.per_prompt(torch.zeros_like(full)), corrupted, atol=1e-4, rtol=0)
    assert not torch.allclose(clean, corrupted, atol=1e-2)


def test_zero_ablating_every_edge_leaves_only_the_constant_biases():
    model = cf.load(make_hf_model("gpt2"))
    graph = cf.Graph.from_model(model)
    tokens = torch.randint(0, VOCAB, (3, 5))
    A = torch.zeros(graph.n_senders, 1, 1, model.cfg.d_model)
    logits = masked_forward(
        model, graph, tokens, None, A, torch.zeros(graph.n_senders, graph.n_receivers)
    )
    const = sum(model.attn_bias(layer) for layer in range(model.cfg.n_layers))
    expected = model.unembed(const)  # the logits read only the constant biases
    torch.testing.assert_close(logits, expected.expand_as(logits), atol=1e-5, rtol=0)


def _brute_force_gpt2(hf, cache, corrupted_outputs, tokens, edge):
    """Ablate one edge with plain HF hooks: the receiver's input loses (clean - corrupted) of
    the sender, computed through HF's own modules."""
    diff = (cache.node_outputs() - corrupted_outputs)[edge.sender_index]  # [b, p, d]
    blocks = hf.transformer.h
    handles = []
    if edge.receiver == "logits":
        handles.append(hf.transformer.ln_f.register_forward_pre_hook(lambda m, a: (a[0] - diff,)))
    elif edge.receiver.startswith("m"):
        layer = int(edge.receiver[1:])
        handles.append(blocks[layer].ln_2.register_forward_pre_hook(lambda m, a: (a[0] - diff,)))
    else:
        layer, head = (int(x) for x in edge.receiver[1:].split(".h"))
        block = blocks[layer]
        stash = {}
        handles.append(block.ln_1.register_forward_pre_hook(lambda m, a: stash.update(x=a[0])))
        d = hf.config.n_embd
        dh = d // hf.config.n_head
        which = "qkv".index(edge.qkv)
        cols = slice(which * d + head * dh, which * d + (head + 1) * dh)

        def splice(module, args, out):
            alt = module(block.ln_1(stash["x"] - diff))
            out = out.clone()
            out[..., cols] = alt[..., cols]
            return out

        # the hook calls the module itself: guard against recursion
        state = {"busy": False}

        def guarded(module, args, out):
            if state["busy"]:
                return out
            state["busy"] = True
            try:
                return splice(module, args, out)
            finally:
                state["busy"] = False

        handles.append(block.attn.c_attn.register_forward_hook(guarded))
    try:
        with torch.no_grad():
            return hf(tokens).logits
    finally:
        for h in handles:
            h.remove()


def test_exact_single_edge_equals_brute_force_with_plain_hooks():
    hf = make_hf_model("gpt2")
    model = cf.load(hf)
    graph = cf.Graph.from_model(model)
    task = _random_task(n=4)
    scores = method_scores(model, task, "exact", batch_size=4).edges
    with torch.no_grad():
        _, cache = model.run_with_cache(task.clean)
        _, corrupted = model.run_with_cache(task.corrupted)
    clean_metric = task.metric_fn(hf(task.clean).logits.detach())
    rng = random.Random(0)
    picks = [
        *rng.sample(list(graph.edges.values()), 12),
        graph.edge("a0.h1->a2.h3<k>"),
        graph.edge("m1->logits"),
    ]
    for edge in picks:
        logits = _brute_force_gpt2(hf, cache, corrupted.node_outputs(), task.clean, edge)
        expected = float(task.metric_fn(logits) - clean_metric)
        got = float(scores[edge.sender_index, edge.receiver_index])
        assert got == pytest.approx(expected, abs=2e-4), edge.name


def test_exact_scores_do_not_depend_on_how_variants_share_a_pass():
    model = cf.load(make_hf_model("llama-gqa-llama3rope"))
    graph = cf.Graph.from_model(model)
    task = _random_task(n=5, padded=True)
    runs = [
        method_scores(model, task, "exact", batch_size=b, max_tokens_per_pass=t).edges
        for b, t in ((5, 1), (2, 100), (5, 10**6))  # one variant a pass ... all in one
    ]
    valid = graph.valid
    for other in runs[1:]:
        torch.testing.assert_close(other[valid], runs[0][valid], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(FAMILY_CONFIGS))
def test_exact_scores_equal_masked_runs_on_other_families(name):
    """Padded prompts read out at different positions: the exact path's readout-only last
    layer (row by row) against full masked runs, on every family."""
    model = cf.load(make_hf_model(name))
    graph = cf.Graph.from_model(model)
    task = _random_task(n=5, padded=True)
    for kind in ("resample", "mean-positional"):
        scores = method_scores(model, task, "exact", kind, batch_size=3).edges
        ev = PreparedRuns(model, task, kind, batch_size=3).evaluator()
        full = graph.valid.float()
        base = ev(full)
        for edge in random.Random(1).sample(list(graph.edges.values()), 8):
            mask = full.clone()
            mask[edge.sender_index, edge.receiver_index] = 0
            assert float(scores[edge.sender_index, edge.receiver_index]) == pytest.approx(
                ev(mask) - base, abs=2e-4
            ), (kind, edge.name)


def test_eap_equals_exact_where_the_path_is_linear():
    """Without a final norm, logit difference is linear in the final stream: EAP is exact on
    every edge into the logits."""
    model = cf.load(make_hf_model("gpt2"))
    model.final_norm = lambda x: x  # a model without a final norm
    graph = cf.Graph.from_model(model)
    task = _random_task(n=4)
    eap = method_scores(model, task, "eap", batch_size=4).edges
    exact = method_scores(model, task, "exact", batch_size=4).edges
    logits_col = graph.receiver_index["logits"]
    torch.testing.assert_close(eap[:, logits_col], exact[:, logits_col], atol=1e-4, rtol=1e-4)
    assert exact[:, logits_col].abs().max() > 0.1


@pytest.mark.parametrize(
    "name", ["gpt2", "llama-gqa-llama3rope", "gemma2-softcap-sliding", "olmo2-gqa"]
)
def test_eap_ig_with_one_step_is_eap(name):
    model = cf.load(make_hf_model(name))
    graph = cf.Graph.from_model(model)
    task = _random_task(n=4, padded=True)
    eap = method_scores(model, task, "eap", batch_size=4).edges
    v = graph.valid
    for mode in ("eap-ig-inputs", "eap-ig-activations"):
        ig = method_scores(model, task, mode, batch_size=4, steps=1).edges
        torch.testing.assert_close(ig[v], eap[v], atol=1e-4, rtol=1e-4)
        ig5 = method_scores(model, task, mode, batch_size=4, steps=5).edges
        assert not torch.allclose(ig5[v], eap[v], atol=1e-3)
        assert torch.isnan(ig5[~v]).all()


def test_eap_approximates_exact_on_average():
    model = cf.load(make_hf_model("gpt2", scale=0.12))  # smoother model: first order holds better
    graph = cf.Graph.from_model(model)
    task = _random_task(n=6)
    v = graph.valid
    eap = method_scores(model, task, "eap-ig-inputs", batch_size=6).edges
    exact = method_scores(model, task, "exact", batch_size=6).edges
    corr = torch.corrcoef(torch.stack([eap[v], exact[v]]))[0, 1]
    assert corr > 0.8


def test_acdc_limits():
    model = cf.load(make_hf_model("gpt_neox-sequential"))  # 46 edges: quick
    graph = cf.Graph.from_model(model)
    task = _random_task(n=4)
    kept = method_scores(model, task, "acdc", tau=0.0, acdc_metric="task").kept
    assert torch.equal(kept, graph.valid)  # tau=0: nothing is removed (every edge moves the metric)
    kept = method_scores(model, task, "acdc", tau=1e9, acdc_metric="task").kept
    assert not kept.any()
    result = method_scores(model, task, "acdc", tau=0.02, acdc_metric="kl")
    scores, kept = result.edges, result.kept
    assert 0 < int(kept.sum()) < graph.n_edges
    logits_col = graph.receiver_index["logits"]
    assert not torch.isnan(scores[:, logits_col][graph.valid[:, logits_col]]).any()


def test_exact_checkpoint_resumes_after_an_interruption(tmp_path):
    model = cf.load(make_hf_model("gpt_neox-sequential"))  # 46 edges: quick
    graph = cf.Graph.from_model(model)
    task = _random_task(n=6)
    full = method_scores(model, task, "exact", batch_size=3).edges

    class Interrupting:
        def __init__(self, task, after):
            self.task, self.calls, self.after = task, 0, after

        def __len__(self):
            return len(self.task)

        def __getattr__(self, name):
            return getattr(self.task, name)

        def metric_fn(self, *args, **kwargs):
            self.calls += 1
            if self.calls > self.after:
                raise KeyboardInterrupt
            return self.task.metric_fn(*args, **kwargs)

    ckpt = tmp_path / "exact_checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):
        method_scores(
            model,
            Interrupting(task, 12),
            "exact",
            batch_size=3,
            checkpoint_dir=tmp_path,
            checkpoint_every_s=0.0,
        )
    assert ckpt.is_file()
    resumed = method_scores(model, task, "exact", batch_size=3, checkpoint_dir=tmp_path).edges
    v = graph.valid
    torch.testing.assert_close(resumed[v], full[v], atol=1e-5, rtol=0)


def test_acdc_checkpoint_resumes_after_an_interruption(tmp_path):
    model = cf.load(make_hf_model("gpt_neox-sequential"))  # 46 edges: quick
    graph = cf.Graph.from_model(model)
    task = _random_task(n=4)
    result = method_scores(model, task, "acdc", tau=0.02)
    scores, kept = result.edges, result.kept

    import circuitfind.runs as runs_module

    calls = {"n": 0}
    original = runs_module.MaskEvaluator.__call__

    def interrupting(self, mask, start_layer=0):
        calls["n"] += 1
        if calls["n"] > 20:
            raise KeyboardInterrupt
        return original(self, mask, start_layer)

    ckpt = tmp_path / "acdc_checkpoint.pt"
    runs_module.MaskEvaluator.__call__ = interrupting
    try:
        with pytest.raises(KeyboardInterrupt):
            method_scores(
                model, task, "acdc", tau=0.02, checkpoint_dir=tmp_path, checkpoint_every_s=0.0
            )
    finally:
        runs_module.MaskEvaluator.__call__ = original
    assert ckpt.is_file()
    result = method_scores(model, task, "acdc", tau=0.02, checkpoint_dir=tmp_path)
    resumed_scores, resumed = result.edges, result.kept
    assert torch.equal(resumed, kept)
    v = graph.valid & ~torch.isnan(scores)
    torch.testing.assert_close(resumed_scores[v], scores[v], atol=1e-6, rtol=0)


@pytest.mark.parametrize("padded", [False, True])
def test_eap_equals_the_gradient_of_a_float_edge_mask(family_config, padded):
    """An independent EAP: make every edge's mask weight m a variable of ``masked_forward``
    (receiver input = A + sum_s m_sr (out_s - A_s)); then score(s -> r) = -dm/dm_sr at m = 1,
    averaged over prompts. Checks the probes, the norm vector-Jacobian products, GQA groups
    and the contraction on every family."""
    _, hf = family_config
    model = cf.load(hf)
    graph = cf.Graph.from_model(model)
    task = _random_task(n=5, padded=padded)
    abl = Ablation(model, task, "resample")
    eap = method_scores(model, task, "eap", batch_size=3).edges

    # just below 1, so masked_forward takes its weighted path (the gradient moves by O(1e-6))
    mask = (graph.valid.float() * (1 - 1e-6)).requires_grad_(True)
    total = 0.0
    for batch in cf.patching.batches(task, 5, model.device):
        logits = masked_forward(
            model,
            graph,
            batch.clean,
            batch.attention_mask,
            abl.outputs(batch),
            mask,
            readout=batch.readout,
        )
        total = total + task.metric_fn(logits, batch.idx, reduce="none").sum()
    (grad,) = torch.autograd.grad(total, mask)
    reference = -grad / len(task)
    v = graph.valid
    scale = reference[v].abs().max()
    assert scale > 1e-3
    torch.testing.assert_close(eap[v], reference[v], atol=2e-5 * float(scale) + 1e-6, rtol=1e-3)


def _shared_prefix_task(V, n=5, T=9, seed=0):
    """Corrupted twins that share their clean prompt's first 3..7 tokens; padded rows."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, V, (n, T), generator=g)
    corrupted = clean.clone()
    for i, k in enumerate([4, 6, 3, 5, 7][:n]):
        corrupted[i, k:] = torch.randint(0, V, (T - k,), generator=g)
    lengths = [T, T - 1, T, T - 2, T][:n]
    return Task.from_tokens(
        [c[:k].tolist() for c, k in zip(clean, lengths)],
        [c[:k].tolist() for c, k in zip(corrupted, lengths)],
        answer=torch.randint(0, V, (n,), generator=g),
        wrong=torch.randint(0, V, (n,), generator=g),
    )


@pytest.mark.parametrize("name", sorted(FAMILY_CONFIGS))
def test_exact_skipping_the_clean_prefix_equals_masked_runs(name, monkeypatch):
    """Corrupted prompts that share a prefix with their clean twins: passes that start at the
    first changed position (forced on: the test models are below the width where it is the
    default) give the full masked runs' scores, on every family."""
    import circuitfind.methods.exact as exact

    starts = []
    original = exact.first_change
    monkeypatch.setattr(
        exact, "first_change", lambda d, r: starts.append(original(d, r)) or starts[-1]
    )
    model = cf.load(make_hf_model(name))
    graph = cf.Graph.from_model(model)
    task = _shared_prefix_task(model.cfg.d_vocab)
    skipped = method_scores(model, task, "exact", batch_size=3, skip_prefix=True).edges
    assert max(starts) >= 3  # the passes did start late
    plain = method_scores(model, task, "exact", batch_size=3, skip_prefix=False).edges
    valid = graph.valid
    torch.testing.assert_close(skipped[valid], plain[valid], atol=1e-5, rtol=0)
    ev = PreparedRuns(model, task, "resample", batch_size=3).evaluator()
    full = valid.float()
    base = ev(full)
    for edge in random.Random(2).sample(list(graph.edges.values()), 6):
        mask = full.clone()
        mask[edge.sender_index, edge.receiver_index] = 0
        got = float(skipped[edge.sender_index, edge.receiver_index])
        assert got == pytest.approx(ev(mask) - base, abs=2e-4), edge.name


def test_exact_skips_its_prefix_by_default_only_where_it_pays():
    from circuitfind.methods.exact import SKIP_MIN_D_MODEL, _prefix_start

    def start(skip, t0, d_model, p=16):
        delta = torch.zeros(2, p, 3)
        delta[1, t0:] = 1.0
        return _prefix_start(skip, delta, torch.tensor([p - 1, p - 1]), d_model)

    assert start(None, 4, SKIP_MIN_D_MODEL) == 4 and start(None, 3, SKIP_MIN_D_MODEL) == 0
    assert start(None, 8, SKIP_MIN_D_MODEL - 1) == 0  # a tiny model: no faster
    assert start(True, 1, 8) == 1 and start(True, 0, 8) == 0 and start(False, 8, 1024) == 0


def test_acdc_on_a_sample_of_edges_matches_a_brute_force_greedy_pass():
    """ACDC restricted to ``try_edges`` is the greedy pass over those edges alone, in ACDC's
    order (receivers from the logits back, senders from the last), each trial a full masked run
    from layer 0; every other edge stays in, untried."""
    model = cf.load(make_hf_model("gpt2"))
    graph = cf.Graph.from_model(model)
    task = _random_task(n=4)
    g = torch.Generator().manual_seed(3)
    sample = graph.valid & (torch.rand(graph.valid.shape, generator=g) < 0.3)
    tau = 0.002
    result = method_scores(model, task, "acdc", tau=tau, try_edges=sample)

    ev = PreparedRuns(model, task, "resample", batch_size=4).evaluator("kl")
    mask = graph.valid.clone().float()
    current = ev(mask)
    kept_ref = graph.valid.clone()
    changes = torch.full(graph.valid.shape, float("nan"))
    for r in reversed(range(graph.n_receivers)):
        for s in reversed(range(int(graph.n_upstream[r]))):
            if not sample[s, r]:
                continue
            mask[s, r] = 0
            value = ev(mask)  # from layer 0: no start-layer shortcut
            changes[s, r] = value - current
            if value - current < tau:
                current, kept_ref[s, r] = value, False
            else:
                mask[s, r] = 1
    assert 0 < int((sample & kept_ref).sum()) < int(sample.sum())  # tau splits the sample
    assert torch.equal(result.kept, kept_ref)
    assert torch.isnan(result.edges[graph.valid & ~sample]).all()
    torch.testing.assert_close(result.edges[sample], changes[sample], atol=1e-5, rtol=0)
    # the whole graph as the sample is plain ACDC
    whole = method_scores(model, task, "acdc", tau=tau, try_edges=graph.valid.clone())
    assert torch.equal(whole.kept, method_scores(model, task, "acdc", tau=tau).kept)
    with pytest.raises(cf.InputError, match="try_edges must be a bool tensor"):
        method_scores(model, task, "acdc", tau=tau, try_edges=sample.float())
