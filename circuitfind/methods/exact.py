"""Exact edge patching: every edge scored by a real patched run.

score(s -> r) = metric(only that edge ablated) - metric(clean). Only receiver r's input changes
(by -(out_s - A_s)), so everything upstream of r's layer comes from the clean cache; many edges
into the same receiver share one batched pass (stacked on the batch axis); the unembedding runs
only at the readout positions, and a last-layer receiver recomputes only the readout position.

Where the pass's senders do not differ from their ablated values before some position ``t0``
(a corrupted prompt that shares its clean twin's first tokens: the senders' outputs there are
the same), nothing before ``t0`` can change (causal attention): the pass computes queries,
head outputs and MLPs only from ``t0`` on (up to the earliest readout), its keys and values
reading the clean stream before it. The result is the same run, with fewer operations
(``circuitfind benchmark --suite pass-size`` times it: at GPT-2 small, 1.5-1.8 x faster per
edge when the corruption starts halfway through 16 tokens, 1.9-2.6 x at three quarters,
``reports/exact_pass_size.md``). By default (``skip_prefix=None``) a pass skips its prefix
when that is at least a quarter of the positions and the model is not tiny
(``d_model >= 256``): below that a pass is bound by its operations' count, not their size, and
a shorter pass saves little of it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from circuitfind.checkpoint import Checkpointer, run_fingerprint
from circuitfind.graph import Graph
from circuitfind.model import ForwardCache, Model, RunContext, pick_positions
from circuitfind.patching import edge_deltas, readout_index, readout_logits, run_from
from circuitfind.progress import bar as progress_bar
from circuitfind.runs import PreparedRuns
from circuitfind.scores import Scores

__all__ = ["score_exact", "tokens_per_pass"]

logger = logging.getLogger(__name__)


def _after_layer(cache: ForwardCache, layer: int, n_layers: int) -> Tensor:
    return cache.resid_pre[layer + 1] if layer + 1 < n_layers else cache.resid_final  # type: ignore[return-value]


def _tile(x: Tensor, k: int) -> Tensor:
    return x.repeat(k, *([1] * (x.dim() - 1)))


SKIP_MIN_D_MODEL = 256
"""Below this width the shorter pass is not faster (module docstring)."""


def _prefix_start(skip_prefix: bool | None, delta: Tensor, readout: Tensor, d_model: int) -> int:
    """Where the pass starts: :func:`first_change` when the prefix is skipped (always with
    True; with None where it pays: at least a quarter of the positions, a model not tiny), else
    0 (the prefix is not even scanned where it would not be skipped)."""
    if skip_prefix is False or (skip_prefix is None and d_model < SKIP_MIN_D_MODEL):
        return 0
    t0 = first_change(delta, readout)
    return t0 if skip_prefix or 4 * t0 >= delta.shape[1] else 0


def first_change(delta: Tensor, readout: Tensor) -> int:
    """The first position where ``delta`` [rows, p, d] moves any row's stream, at most the
    earliest readout position (so every readout is computed)."""
    moved = (delta != 0).any(dim=2).any(dim=0).nonzero()
    t0 = int(moved[0, 0]) if moved.numel() else delta.shape[1]
    return min(t0, int(readout.min()))


def _patched_logits(
    model: Model,
    graph: Graph,
    cache: ForwardCache,
    ctx: RunContext,
    readout: Tensor,
    receiver: int,
    delta: Tensor,
    skip_prefix: bool | None = None,
) -> Tensor:
    """Readout logits [V*b, vocab] with receiver ``receiver``'s input shifted by ``delta``
    ([V*b, p, d], variant-major); ``skip_prefix``: start at the first position ``delta``
    moves (True), never (False), or where that pays (None; module docstring)."""
    cfg = model.cfg
    rec = graph.receivers[receiver]
    b = readout.shape[0]
    V = delta.shape[0] // b
    if rec.node == "logits":
        final = cache.resid_final
        assert final is not None
        return readout_logits(model, _tile(final, V) + delta, readout)
    layer = rec.layer
    assert layer is not None
    # last layer: only each prompt's readout position matters ([1] shared, or one a row);
    # before it, only the positions from the first one the delta moves (t0)
    last = layer == cfg.n_layers - 1
    pos, pos_v = (readout_index(readout), readout_index(readout, V * b)) if last else (None, None)
    t0 = 0 if last else _prefix_start(skip_prefix, delta, readout, cfg.d_model)
    if t0 > 0:
        pos_v = torch.arange(t0, delta.shape[1], device=delta.device)

    def here(t: Tensor) -> Tensor:
        """t ([b or V*b, p, ...]) at the positions this pass computes."""
        if t0 > 0:
            return t[:, t0:]
        if pos is None or pos_v is None:
            return t
        return pick_positions(t, pos if t.shape[0] == b else pos_v)

    ctx_v = ctx.tile(V)
    after = here(_after_layer(cache, layer, cfg.n_layers))
    if rec.qkv is None:  # an MLP
        x, clean_mlp = here(cache.receiver_input(layer, "mlp")), here(cache.mlps[layer])
        new = model.mlp(layer, _tile(x, V) + here(delta))
        resid = _tile(after - clean_mlp, V) + new
    else:
        head = rec.head
        assert head is not None
        x = _tile(cache.resid_pre[layer], V)
        shifted = x + delta
        inputs = [shifted if t == rec.qkv else x for t in ("q", "k", "v")]
        z, _ = model.attention(
            layer, inputs[0], inputs[1], inputs[2], ctx_v, q_index=pos_v, heads=[head]
        )
        new_head = torch.einsum("bpe,em->bpm", z[:, :, 0], model.w.layers[layer].W_O[head])
        change = new_head - _tile(here(cache.heads[layer][:, :, head]), V)
        if cfg.post_norms:  # the stream moves by the post-norm's change of the heads' sum
            pre = _tile(here(cache.attn_pre[layer]), V)
            change = model.post_attn(layer, pre + change) - _tile(here(cache.attn_post[layer]), V)
        if cfg.parallel_attn_mlp:
            resid = _tile(after, V) + change
        else:
            mid = _tile(here(cache.resid_mid[layer]), V) + change
            resid = mid + model.mlp(layer, mid)
    if pos is not None:
        return model.unembed(resid[:, 0])
    if t0 > 0:
        streams = [s[:, :t0] for s in cache.resid_pre]
        return run_from(model, resid, ctx_v, layer + 1, readout, prefix=(streams, V))
    return run_from(model, resid, ctx_v, layer + 1, readout)


def tokens_per_pass(device: torch.device | str) -> int:
    """How many tokens (variants x prompts x positions) one batched patched pass should hold.

    Measured on 2 CPU cores with GPT-2 small, 32 prompts x 16 tokens
    (``circuitfind benchmark --suite pass-size``, ``reports/exact_pass_size.md``): per edge,
    passes of ~2k tokens are 1.6x faster than 16k-token passes in early and middle layers (whose
    activations, hundreds of MB a tensor, go to fresh pages every time) and as fast in the
    last. On a GPU larger passes keep the device busy (not measured: no GPU was lent).
    """
    return 32768 if torch.device(device).type == "cuda" else 2048


def score_exact(
    runs: PreparedRuns,
    *,
    metric: Any = None,
    max_tokens_per_pass: int | None = None,
    checkpoint_every_s: float = 60.0,
    checkpoint_every: int = 20000,
    skip_prefix: bool | None = None,
) -> Scores:
    """Exact patching scores for every edge: [S, R] (NaN outside ``graph.valid``).

    With ``runs.checkpoint_dir``, the sums so far are saved there (``exact_checkpoint.pt``)
    every ``checkpoint_every`` edge evaluations (an edge on one batch of prompts), every
    ``checkpoint_every_s`` seconds and on SIGINT / SIGTERM; a later call with the same
    directory and the same run (model weights, task, metric, ablation, batch size, versions:
    :func:`circuitfind.checkpoint.run_fingerprint`) resumes where it stopped, a different run is
    refused. The file is removed on success. ``max_tokens_per_pass`` bounds each batched pass
    (default: :func:`tokens_per_pass`). ``skip_prefix``: start each pass at the first position
    its senders change (True), never (False), or where that pays (None, the default; module
    docstring): the scores are the same either way.
    """
    model, graph, task = runs.model, runs.graph, runs.task
    if max_tokens_per_pass is None:
        max_tokens_per_pass = tokens_per_pass(model.device)
    S, R = graph.n_senders, graph.n_receivers
    n = len(task)
    n_batches = len(runs)
    totals = torch.zeros(S, R, dtype=torch.float64)
    ckpt = Checkpointer(
        runs.checkpoint_dir / "exact_checkpoint.pt" if runs.checkpoint_dir else None,
        run_fingerprint(
            model=model,
            task=task,
            method="exact",
            options={"batch_size": runs.batch_size},
            ablation=runs.ablation,
            metric=metric,
            seed=getattr(task, "meta", {}).get("seed"),
        ),
        total=graph.n_edges * n_batches,
        unit="edge evaluations (edges x prompt batches)",
        what="exact patching",
        every=checkpoint_every,
        every_s=checkpoint_every_s,
    )
    # where the work stands: batches before done_batch are summed; in done_batch, receivers
    # before done_receiver, and senders before done_sender of done_receiver
    done_batch = done_receiver = done_sender = 0
    done = 0  # edge evaluations summed into totals
    bar = progress_bar(
        total=graph.n_edges * n_batches,
        desc="exact patching",
        disable=not runs.progress,
        unit="edge",
    )
    with ckpt, torch.no_grad():
        state = ckpt.load()
        if state is not None:
            totals = state["totals"]
            done_batch, done_receiver = int(state["batch"]), int(state["receiver"])
            done_sender, done = int(state["sender"]), ckpt.saved_done
            bar.update(done)
        for batch_i, prep in enumerate(runs):
            if batch_i < done_batch:
                continue
            batch, cache = prep.batch, prep.cache
            diff = prep.clean_diff  # [S, b, p, d]
            ctx = model.context(batch.clean, batch.attention_mask)
            clean = prep.metric(task, prep.clean_logits, metric)
            b, p = batch.clean.shape
            chunk = max(1, max_tokens_per_pass // (b * p))
            resuming = batch_i == done_batch
            for r in range(done_receiver if resuming else 0, R):
                upstream = int(graph.n_upstream[r])
                first = done_sender if resuming and r == done_receiver else 0
                for start in range(first, upstream, chunk):
                    senders = torch.arange(start, min(start + chunk, upstream))
                    V = len(senders)
                    delta = edge_deltas(model, cache, diff, senders).reshape(V * b, p, -1)
                    logits = _patched_logits(
                        model, graph, cache, ctx, batch.readout, r, delta, skip_prefix
                    )
                    values = prep.metric(task, logits, metric, variants=V).view(V, b)
                    totals[senders, r] += (values - clean[None]).sum(1).double().cpu()
                    done += V
                    bar.update(V)
                    position = (batch_i, r, start + V)
                    ckpt.maybe_save(
                        lambda pos=position: {  # type: ignore[misc]
                            "totals": totals,
                            "batch": pos[0],
                            "receiver": pos[1],
                            "sender": pos[2],
                        },
                        done,
                    )
    bar.close()
    ckpt.done()
    scores = (totals / n).float()
    scores[~graph.valid] = float("nan")
    return Scores(scores)
