"""Exact edge patching: every edge scored by a real patched run.

score(s -> r) = metric(only that edge ablated) - metric(clean). Only receiver r's input changes
(by -(out_s - A_s)), so everything upstream of r's layer comes from the clean cache; many edges
into the same receiver share one batched pass (stacked on the batch axis); the unembedding runs
only at the readout positions, and a last-layer receiver recomputes only the readout position.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitfind.graph import Graph
from circuitfind.model import ForwardCache, Model, RunContext, pick_positions
from circuitfind.patching import (
    Ablation,
    batches,
    edge_deltas,
    readout_index,
    readout_logits,
    run_from,
    save_checkpoint,
)

__all__ = ["exact_scores", "tokens_per_pass"]

logger = logging.getLogger(__name__)


def _after_layer(cache: ForwardCache, layer: int, n_layers: int) -> Tensor:
    return cache.resid_pre[layer + 1] if layer + 1 < n_layers else cache.resid_final  # type: ignore[return-value]


def _tile(x: Tensor, k: int) -> Tensor:
    return x.repeat(k, *([1] * (x.dim() - 1)))


def _patched_logits(
    model: Model,
    graph: Graph,
    cache: ForwardCache,
    ctx: RunContext,
    readout: Tensor,
    receiver: int,
    delta: Tensor,
) -> Tensor:
    """Readout logits [V*b, vocab] with receiver ``receiver``'s input shifted by ``delta``
    ([V*b, p, d], variant-major)."""
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
    # last layer: only each prompt's readout position matters ([1] shared, or one a row)
    last = layer == cfg.n_layers - 1
    pos, pos_v = (readout_index(readout), readout_index(readout, V * b)) if last else (None, None)

    def here(t: Tensor) -> Tensor:
        """t ([b or V*b, p, ...]) at the readout positions when only those are computed."""
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
    return run_from(model, resid, ctx_v, layer + 1, readout)


def tokens_per_pass(device: torch.device | str) -> int:
    """How many tokens (variants x prompts x positions) one batched patched pass should hold.

    Measured on 2 CPU cores with GPT-2 small, 32 prompts x 16 tokens
    (``benchmarks/exact_pass_size.py``, ``reports/exact_pass_size.md``): per edge, passes of
    ~2k tokens are 1.6x faster than 16k-token passes in early and middle layers (whose
    activations, hundreds of MB a tensor, go to fresh pages every time) and as fast in the
    last. On a GPU larger passes keep the device busy (not measured: no GPU was lent).
    """
    return 32768 if torch.device(device).type == "cuda" else 2048


def exact_scores(
    model: Model,
    graph: Graph,
    task: Any,
    ablation: Ablation,
    *,
    batch_size: int = 32,
    metric: Any = None,
    max_tokens_per_pass: int | None = None,
    progress: bool = True,
    checkpoint: Path | None = None,
    checkpoint_every_s: float = 60.0,
) -> Tensor:
    """Exact patching scores for every edge: [S, R] (NaN outside ``graph.valid``).

    With ``checkpoint``, the sums so far are saved there every ``checkpoint_every_s`` seconds
    and after each batch; a later call with the same file resumes where it stopped.
    ``max_tokens_per_pass`` bounds each batched pass (default: :func:`tokens_per_pass`).
    """
    if max_tokens_per_pass is None:
        max_tokens_per_pass = tokens_per_pass(model.device)
    S, R = graph.n_senders, graph.n_receivers
    n = len(task)
    totals = torch.zeros(S, R, dtype=torch.float64)
    done_batches, done_receivers = 0, 0
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=True)
        if tuple(state["totals"].shape) == (S, R) and int(state["n"]) == n:
            totals = state["totals"]
            done_batches, done_receivers = int(state["batch"]), int(state["receiver"])
            logger.info("resuming exact patching from %s", checkpoint)

    def save(batch_i: int, receiver: int) -> None:
        if checkpoint is None:
            return
        save_checkpoint(
            checkpoint, {"totals": totals, "batch": batch_i, "receiver": receiver, "n": n}
        )

    bar = tqdm(
        total=graph.n_edges * -(-n // batch_size),
        desc="exact patching",
        disable=not progress,
        unit="edge",
    )
    last_save = time.monotonic()
    with torch.no_grad():
        for batch_i, batch in enumerate(batches(task, batch_size, model.device)):
            if batch_i < done_batches:
                bar.update(graph.n_edges)
                continue
            cache = model.cache(batch.clean, batch.attention_mask)
            A = ablation.outputs(batch)
            diff = cache.node_outputs() - A.expand(-1, *cache.input.shape)  # [S, b, p, d]
            ctx = model.context(batch.clean, batch.attention_mask)
            assert cache.resid_final is not None
            clean_logits = readout_logits(model, cache.resid_final, batch.readout)
            clean = task.metric_fn(clean_logits.float(), batch.idx, reduce="none", metric=metric)
            b, p = batch.clean.shape
            chunk = max(1, max_tokens_per_pass // (b * p))
            for r in range(R):
                upstream = int(graph.n_upstream[r])
                if batch_i == done_batches and r < done_receivers:
                    bar.update(upstream)
                    continue
                for start in range(0, upstream, chunk):
                    senders = torch.arange(start, min(start + chunk, upstream))
                    V = len(senders)
                    delta = edge_deltas(model, cache, diff, senders).reshape(V * b, p, -1)
                    logits = _patched_logits(model, graph, cache, ctx, batch.readout, r, delta)
                    values = task.metric_fn(
                        logits.float(), batch.idx.repeat(V), reduce="none", metric=metric
                    ).view(V, b)
                    totals[senders, r] += (values - clean[None]).sum(1).double().cpu()
                    bar.update(V)
                if checkpoint is not None and time.monotonic() - last_save > checkpoint_every_s:
                    save(batch_i, r + 1)
                    last_save = time.monotonic()
            save(batch_i + 1, 0)
    bar.close()
    scores = (totals / n).float()
    scores[~graph.valid] = float("nan")
    return scores
