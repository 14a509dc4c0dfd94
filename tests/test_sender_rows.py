"""SenderRows' weighted sums against a plain stack-and-sum, with and without autograd."""

from __future__ import annotations

import pytest
import torch

from circuitfind.sender_rows import PrefixSums, SenderRows, sparse_addmm


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("n_rows", [2, 9])  # gathered (few rows) and dense (many)
def test_weighted_sums_match_a_plain_sum(grad, n_rows) -> None:
    g = torch.Generator().manual_seed(0)
    b, p, d, k, extra = 2, 3, 5, 4, 8
    prefix = torch.randn(k, b, p, d, generator=g)
    more = [torch.randn(b, p, d, generator=g) for _ in range(extra)]
    ablated = torch.randn(b, p, d, generator=g)
    with torch.set_grad_enabled(grad):
        rows = SenderRows(prefix, k + extra)
        for t in more[:-1]:
            rows.append(t)
        rows.append_diff(more[-1] + ablated, ablated)
        everything = torch.cat([prefix, torch.stack(more)])
        torch.testing.assert_close(rows.total(), everything.sum(0))
        upstream = k + extra - 1
        idx = torch.randperm(upstream, generator=g)[:n_rows]
        w = torch.randn(n_rows, 3, generator=g)
        base = torch.randn(b, p, d, generator=g)
        got = rows.weighted(idx, w, upstream, base, sign=-1.0)
        want = base - torch.einsum("sbpd,sc->cbpd", everything[idx], w)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        picked = rows.pick(torch.tensor([2]))
        assert len(picked) == len(rows)
        torch.testing.assert_close(picked.total(), everything[:, :, 2:3].sum(0))


def test_append_heads_is_each_heads_output_minus_its_ablated_value() -> None:
    g = torch.Generator().manual_seed(1)
    b, p, H, e, d, k = 2, 3, 4, 5, 6, 3
    z, W_O = torch.randn(b, p, H, e, generator=g), torch.randn(H, e, d, generator=g)
    ablated, total = torch.randn(H, b, p, d, generator=g), torch.randn(b, p, d, generator=g)
    want = torch.einsum("bphe,hed->hbpd", z, W_O) - ablated
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            rows = SenderRows(torch.randn(k, b, p, d, generator=g), k + H, PrefixSums())
            got_total = rows.append_heads(z, W_O, ablated, total)
            torch.testing.assert_close(torch.stack([rows.row(k + h) for h in range(H)]), want)
            torch.testing.assert_close(got_total, total + want.sum(0))


def test_prefix_sums_keep_a_value_only_for_the_same_prefix_and_weights() -> None:
    sums, prefix = PrefixSums(), torch.randn(4, 2)
    calls = []

    def make(v: float):
        return lambda: calls.append(v) or torch.full((1,), v)

    w = torch.ones(4, 1)
    sums.start(prefix, 4)
    assert float(sums.get((0,), w, make(1.0))) == 1.0
    assert float(sums.get((0,), w.clone(), make(2.0))) == 1.0  # same weights: kept
    assert float(sums.get((0,), 2 * w, make(3.0))) == 3.0  # other weights: made again
    sums.start(prefix[:3], 3)  # another prefix: nothing kept
    assert float(sums.get((0,), 2 * w, make(4.0))) == 4.0
    prefix[:3].add_(1.0)  # the same tensor, written since: nothing kept
    sums.start(prefix[:3], 3)
    assert float(sums.get((0,), 2 * w, make(5.0))) == 5.0
    assert calls == [1.0, 3.0, 4.0, 5.0] and sums.hits == 1
    buf = sums.out((2, 3), prefix)
    assert sums.out((2, 3), prefix) is buf and sums.out((3, 2), prefix) is not buf


def test_prefix_sums_claims_are_per_run_and_stale_sums_make_room() -> None:
    sums, prefix, w = PrefixSums(limit=8), torch.randn(4, 2), torch.ones(4, 1)
    one = lambda: torch.zeros(1)  # noqa: E731 (4 bytes)
    sums.start(prefix, 4)
    assert sums.claim(6) and not sums.claim(3) and sums.claim(2)  # within 8, in order
    sums.get((0,), w, one)
    sums.get((1,), w, one)
    assert set(sums.sums) == {(0,), (1,)} and sums.bytes == 8
    sums.start(prefix, 4)  # the next run: its own claims, from nothing
    assert sums.claim(8)
    sums.get((1,), w, one)  # kept from the last run: a hit
    sums.get((2,), w, one)  # no room: the sum this run did not ask for goes
    assert set(sums.sums) == {(1,), (2,)} and sums.bytes == 8 and sums.hits == 1


def test_prefix_sums_constants_are_made_once_per_prefix_ablation_and_check() -> None:
    sums, prefix, ablated = PrefixSums(), torch.randn(4, 2), torch.randn(6, 2)
    calls: list[str] = []

    def make(tag: str):
        return lambda: calls.append(tag) or tag

    sums.start(prefix, 4, ablated)
    idx = torch.tensor([1, 2])
    assert sums.constant("a", make("a1")) == "a1"
    assert sums.constant("a", make("a2")) == "a1"  # kept
    assert sums.constant("p", make("p1"), idx) == "p1"
    assert sums.constant("p", make("p2"), idx.clone()) == "p1"  # the same index, by value
    assert sums.constant("p", make("p3"), idx + 1) == "p3"  # another index: made again
    assert sums.constant("p", make("p4"), None) == "p4"  # no check where one was given
    sums.start(prefix, 4, ablated)  # the same run again: kept
    assert sums.constant("a", make("a3")) == "a1"
    sums.start(prefix, 4, ablated.clone())  # other ablated outputs: made again
    assert sums.constant("a", make("a4")) == "a4"
    ablated.mul_(2.0)
    sums.start(prefix, 4, ablated)  # the same tensor, written since: made again
    assert sums.constant("a", make("a5")) == "a5"
    assert calls == ["a1", "p1", "p3", "p4", "a4", "a5"]


def test_picking_rows_at_the_readout_equals_picking_each_row() -> None:
    """The vectorised pick (and its kept prefix part) against ``pick_positions`` row by
    row, for a shared index and a per-prompt one."""
    from circuitfind.ops import pick_positions

    g = torch.Generator().manual_seed(0)
    k, b, p, d = 3, 4, 5, 6
    with torch.no_grad():
        rows = SenderRows(torch.randn(k, b, p, d, generator=g), k + 4)
        for _ in range(2):
            rows.append(torch.randn(b, p, d, generator=g))
        reuse = PrefixSums()
        reuse.start(rows.pre, k)
        for index in (torch.tensor([2]), torch.tensor([[0], [4], [1], [3]])):
            want = torch.stack([pick_positions(rows.row(i), index) for i in range(len(rows))])
            for keep in (None, reuse, reuse):  # the second pass reads the kept prefix part
                got = rows.pick(index, keep)
                assert len(got) == len(rows) and got.capacity == rows.capacity
                assert torch.equal(torch.stack([got.row(i) for i in range(len(got))]), want)


def _deep(family: str):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from tests.factories import VOCAB

    torch.manual_seed(0)
    if family.startswith("gpt2"):
        heads = 1 if family == "gpt2-one-head" else 2
        hf = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=heads))
    else:
        hf = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=VOCAB,
                hidden_size=32,
                num_hidden_layers=4,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=40,
            )
        )
    hf.config._attn_implementation = "eager"
    return hf.eval()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_trials_sharing_prefix_sums_equal_fresh_masked_runs(family) -> None:
    """ACDC's trials at one receiver layer with the later groups' prefix sums kept between
    them: each trial's metric equals a masked run with nothing kept (to float32 rounding), a
    fresh evaluator on the last trial makes the same bits, and the kept sums were used."""
    import circuitfind as cf
    from circuitfind.runs import PreparedRuns
    from tests.test_patching import _random_task

    model = cf.load(_deep(family))
    graph = cf.Graph.from_model(model)
    runs = PreparedRuns(model, _random_task(n=4), "resample", batch_size=2)
    plain, shared = runs.evaluator("kl"), runs.evaluator("kl", reuse_prefix=True)
    start = 2
    k = 1 + start * (model.cfg.n_heads + 1)  # senders before the start layer
    later = [r for r in range(graph.n_receivers) if graph.n_upstream[r] > k]
    at_start = [r for r in range(graph.n_receivers) if graph.n_upstream[r] == k]
    g = torch.Generator().manual_seed(0)
    mask = graph.valid.clone().float()
    for r in later[:2] + later[-1:]:  # a few later receivers already lost edges
        mask[int(torch.randint(0, k, (1,), generator=g)), r] = 0
    for trial in range(10):
        r = at_start[trial % len(at_start)]
        mask[int(torch.randint(0, k, (1,), generator=g)), r] = 0  # the edge tried
        if trial == 6:  # a removal kept in a later receiver: its kept sum is made again
            mask[int(torch.randint(0, k, (1,), generator=g)), later[0]] = 0
        want = plain.per_prompt(mask, start_layer=start)
        got = shared.per_prompt(mask, start_layer=start)
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    assert shared.reuse is not None and sum(s.hits for s in shared.reuse.values()) > 0
    fresh = runs.evaluator("kl", reuse_prefix=True).per_prompt(mask, start_layer=start)
    assert torch.equal(fresh, got)


@pytest.mark.parametrize("family", ["gpt2-one-head", "llama"])
def test_receivers_cut_off_from_every_sender_read_the_ablated_stream_alone(family) -> None:
    """Groups whose edges are all cut share one broadcast input: normalising it in place
    for one group must not change the others' (no-grad run against the autograd run)."""
    import circuitfind as cf
    from circuitfind.patching import masked_forward
    from circuitfind.runs import PreparedRuns
    from tests.test_patching import _random_task

    model = cf.load(_deep(family))
    graph = cf.Graph.from_model(model)
    prep = next(iter(PreparedRuns(model, _random_task(n=2), "resample", batch_size=2)))
    mask = graph.valid.clone().float()
    for r in graph.receivers:  # layer 1's heads read nothing; some of layer 2's too
        if r.qkv and (r.layer == 1 or (r.layer == 2 and r.head == 0)):
            mask[:, r.index] = 0
    mask[3, graph.receiver_index["m2"]] = 0
    args = (model, graph, prep.batch.clean, prep.batch.attention_mask, prep.ablated, mask)
    with torch.no_grad():
        fast = masked_forward(*args)
    with torch.enable_grad():
        slow = masked_forward(*args).detach()
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("share", [0.02, 0.1, 0.6])
@pytest.mark.parametrize("aliased", [False, True])
def test_sparse_addmm_equals_the_dense_product(share: float, aliased: bool) -> None:
    """Either way (row by row below SPARSE_SHARE, one product above) it is base + W^T R."""
    gen = torch.Generator().manual_seed(int(share * 100) + aliased)
    rows = torch.randn(40, 300, generator=gen, dtype=torch.float64)
    weights = torch.randn(40, 7, generator=gen, dtype=torch.float64)
    weights[torch.rand(40, 7, generator=gen) >= share] = 0.0
    base = torch.randn(7, 300, generator=gen, dtype=torch.float64)
    want = base + weights.T @ rows
    out = base.clone() if aliased else torch.empty_like(base)
    got = sparse_addmm(out if aliased else base, weights, rows, out)
    assert got.data_ptr() == out.data_ptr()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", ["gpt2-one-head", "llama"])
@pytest.mark.parametrize("kept", [0.03, 0.5])
def test_a_sparse_circuits_masked_run_equals_the_autograd_run(family, kept) -> None:
    """A circuit keeping few edges takes the row-by-row sums (sparse_addmm), from the first
    layer and from a later start layer with kept prefix sums; the autograd run stacks rows."""
    import circuitfind as cf
    from circuitfind.patching import masked_forward
    from circuitfind.runs import PreparedRuns
    from tests.test_patching import _random_task

    model = cf.load(_deep(family))
    graph = cf.Graph.from_model(model)
    prep = next(iter(PreparedRuns(model, _random_task(n=2), "resample", batch_size=2)))
    g = torch.Generator().manual_seed(int(kept * 100))
    mask = (graph.valid & (torch.rand(graph.valid.shape, generator=g) < kept)).float()
    args = (model, graph, prep.batch.clean, prep.batch.attention_mask, prep.ablated, mask)
    with torch.enable_grad():
        slow = masked_forward(*args).detach()
    with torch.no_grad():
        fast = masked_forward(*args)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    runs = PreparedRuns(model, _random_task(n=2), "resample", batch_size=2)
    plain, shared = runs.evaluator("kl"), runs.evaluator("kl", reuse_prefix=True)
    for start in (1, 2, 2):
        torch.testing.assert_close(
            shared.per_prompt(mask, start_layer=start),
            plain.per_prompt(mask, start_layer=start),
            atol=2e-6,
            rtol=1e-5,
        )


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_plans_bound_on_kept_sums_holds_and_is_reached(family) -> None:
    """With no cap, trials from every start layer keep at most ``kept_sum_streams`` [b, p, d]
    sums per batch, and one of the states in which the later q, k, v groups (all, q alone,
    q and k) and every later MLP lost edges reaches it."""
    import circuitfind as cf
    from circuitfind.plan import shape_of
    from circuitfind.plan_terms import kept_sum_streams
    from circuitfind.runs import PreparedRuns
    from tests.test_patching import _random_task

    model = cf.load(_deep(family))
    graph = cf.Graph.from_model(model)
    runs = PreparedRuns(model, _random_task(n=2), "resample", batch_size=2)
    bound = kept_sum_streams(shape_of(model))
    stream = runs.batches[0].clean_diff[0].numel() * 4
    g = torch.Generator().manual_seed(0)
    most = 0
    for pruned in (("q", "k", "v"), ("q",), ("q", "k")):  # MLPs and logits too, always
        for start in range(model.cfg.n_layers):
            ev = runs.evaluator("kl", reuse_prefix=True)
            ev.per_prompt(graph.valid.float(), start_layer=start)  # makes the PrefixSums
            ev.reuse[0].limit = None  # type: ignore[index]
            mask = graph.valid.clone().float()
            for r in range(graph.n_receivers):
                rec = graph.receivers[r]
                if (rec.layer is None or rec.layer >= start) and rec.qkv in (None, *pruned):
                    mask[int(torch.randint(0, int(graph.n_upstream[r]), (1,), generator=g)), r] = 0
            ev.per_prompt(mask, start_layer=start)
            kept = ev.reuse[0].bytes  # type: ignore[index]
            assert kept % stream == 0 and kept // stream <= bound, (start, kept // stream, bound)
            most = max(most, kept // stream)
    assert most == bound
