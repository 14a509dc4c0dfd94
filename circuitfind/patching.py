"""The patching engine: runs in which every edge reads either its sender's current output or the
sender's ablated output.

Notation (shapes): S senders, R receivers, b prompts, p positions, d = d_model.

- ``A`` [S, b|1, p|1, d]: each sender's ablated output (the corrupted run's for ``resample``; the
  mean over the task's prompts for ``mean``/``mean-positional``; zeros for ``zero``).
- In a run, ``D_s = out_s - A_s`` is how far sender s's current output is from its ablated one.
- A receiver r reads ``const_r + sum_{s upstream} A_s + sum_s mask[s, r] * D_s``, i.e. its input
  in the fully ablated run plus the differences of the edges it keeps. ``const_r`` is the sum of
  the attention-output biases upstream of r (they belong to no node: see ``circuitfind.model``).

A receiver whose mask column is all ones reads the ordinary residual stream, so a mask of all
ones is the clean run and a mask of all zeros is the ablated run (for ``resample``: the corrupted
run), exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from circuitfind.graph import Graph
from circuitfind.model import ForwardCache, Model, RunContext, pick_positions
from circuitfind.sender_rows import PrefixSums, SenderRows, sparse_addmm
from circuitfind.vocab import choose

__all__ = [
    "ABLATIONS",
    "Ablation",
    "Batch",
    "ablation_kind",
    "batches",
    "edge_deltas",
    "masked_forward",
    "readout_logits",
]

AblationKind = Literal["resample", "mean", "mean-positional", "zero"]
ABLATIONS: tuple[str, ...] = ("resample", "mean", "mean-positional", "zero")
_ABLATION_ALIASES = {
    "patching": "resample",  # MIB's name
    "counterfactual": "resample",
    "corrupted": "resample",
    "resample-ablation": "resample",
    "mean-pos": "mean-positional",
    "positional-mean": "mean-positional",
    "zero-ablation": "zero",
    "mean-ablation": "mean",
}


def ablation_kind(kind: str) -> str:
    """The canonical name of an ablation from any common spelling (``mean_positional``,
    MIB's ``patching``, ``counterfactual``); an unknown one is an error naming the choices."""
    return choose(kind, ABLATIONS, _ABLATION_ALIASES, "ablation")


@dataclass
class Batch:
    """A slice of a task's prompts, ready to run."""

    idx: Tensor  # [b] prompt indices into the task
    clean: Tensor  # [b, p]
    corrupted: Tensor  # [b, p]
    attention_mask: Tensor | None  # [b, p]
    readout: Tensor  # [b]

    @property
    def size(self) -> int:
        return int(self.idx.shape[0])


def batches(task: Any, batch_size: int, device: torch.device) -> Iterator[Batch]:
    """The task's prompts in batches (trimmed to the longest prompt of each batch)."""
    n = len(task)
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        mask = task.attention_mask[idx] if task.attention_mask is not None else None
        length = int(task.readout[idx].max()) + 1
        if mask is not None:
            mask = mask[:, :length].to(device)
            if bool(mask.all()):
                mask = None
        yield Batch(
            idx=idx,
            clean=task.clean[idx, :length].to(device),
            corrupted=task.corrupted[idx, :length].to(device),
            attention_mask=mask,
            readout=task.readout[idx].to(device),
        )


def readout_logits(model: Model, resid: Tensor, readout: Tensor) -> Tensor:
    """Unembed only the readout position of each prompt: [b, p, d] -> [b, vocab].

    ``resid`` may hold several variants stacked on the batch axis (variant-major); ``readout``
    is per prompt and is tiled to match.
    """
    reps = resid.shape[0] // readout.shape[0]
    pos = readout.repeat(reps)
    picked = resid[torch.arange(resid.shape[0], device=resid.device), pos]
    return model.unembed(picked)


# ---------------------------------------------------------------------------- ablations
class Ablation:
    """Where ablated sender outputs come from, for any batch of a task."""

    def __init__(
        self,
        model: Model,
        task: Any,
        kind: str,
        batch_size: int = 32,
        *,
        clean_caches: Iterable[tuple[Batch, ForwardCache]] | None = None,
    ) -> None:
        """``clean_caches``: the task's clean runs, batch by batch, when they are made already
        (mean ablations then average them instead of running the prompts again)."""
        kind = ablation_kind(kind)
        self.kind = kind
        self.model = model
        self._mean: Tensor | None = None
        if kind in ("mean", "mean-positional"):
            self._mean = self._mean_outputs(
                task, batch_size, positional=kind == "mean-positional", clean_caches=clean_caches
            )

    @torch.no_grad()
    def _mean_outputs(
        self,
        task: Any,
        batch_size: int,
        positional: bool,
        clean_caches: Iterable[tuple[Batch, ForwardCache]] | None = None,
    ) -> Tensor:
        """Mean sender outputs over the task's clean prompts (real tokens only)."""
        total: Tensor | None = None
        count: Tensor | None = None
        if clean_caches is None:
            clean_caches = [
                (b, self.model.cache(b.clean, b.attention_mask))
                for b in batches(task, batch_size, self.model.device)
            ]
        for batch, cache in clean_caches:
            outs = cache.node_outputs()  # [S, b, p, d]
            real = (
                batch.attention_mask.to(outs.dtype)
                if batch.attention_mask is not None
                else torch.ones(outs.shape[1:3], dtype=outs.dtype, device=outs.device)
            )
            w = real[None, :, :, None]
            if positional:
                s, c = (outs * w).sum(1), real.sum(0)[:, None]  # [S, p, d], [p, 1]
            else:
                s, c = (outs * w).sum((1, 2)), real.sum()[None, None]  # [S, d]
            if total is None:
                total, count = s, c
            else:
                assert count is not None
                if positional and s.shape[1] != total.shape[1]:  # pad to the longer batch
                    width = max(s.shape[1], total.shape[1])
                    total, s = _pad_pos(total, width), _pad_pos(s, width)
                    count, c = _pad_pos(count, width), _pad_pos(c, width)
                total, count = total + s, count + c
        assert total is not None and count is not None
        mean = total / count.clamp(min=1)
        return mean[:, None] if positional else mean[:, None, None]  # [S, 1, p|1, d]

    def outputs(self, batch: Batch, corrupted_cache: ForwardCache | None = None) -> Tensor:
        """Ablated sender outputs for a batch: [S, b|1, p|1, d]."""
        S = 1 + self.model.cfg.n_layers * (self.model.cfg.n_heads + 1)
        if self.kind == "resample":
            if corrupted_cache is None:
                return self.model.node_outputs(batch.corrupted, batch.attention_mask)
            return corrupted_cache.node_outputs()
        if self.kind == "zero":
            return torch.zeros(
                S, 1, 1, self.model.cfg.d_model, dtype=self.model.dtype, device=self.model.device
            )
        assert self._mean is not None
        mean = self._mean
        if self.kind == "mean-positional":
            p = batch.clean.shape[1]
            mean = _pad_pos(mean[:, 0], p)[:, None, :p] if mean.shape[2] < p else mean[:, :, :p]
        return mean


def _pad_pos(x: Tensor, width: int) -> Tensor:
    """Zero-pad the position axis (axis 1) of x to ``width``."""
    if x.shape[1] >= width:
        return x
    pad = torch.zeros(x.shape[0], width - x.shape[1], *x.shape[2:], dtype=x.dtype, device=x.device)
    return torch.cat([x, pad], dim=1)


# ---------------------------------------------------------------------------- masked forward
def _layer_constant(model: Model, layer: int, *, mlp: bool) -> Tensor | float:
    """Attention-output biases upstream of a receiver in ``layer`` (MLP or attention)."""
    stop = layer + 1 if (mlp and not model.cfg.parallel_attn_mlp) else layer
    total: Tensor | float = 0.0
    for i in range(stop):
        b = model.attn_bias(i)
        if b is not None:
            total = total + b
    return total


def masked_forward(
    model: Model,
    graph: Graph,
    tokens: Tensor,
    attention_mask: Tensor | None,
    ablated: Tensor,
    mask: Tensor,
    *,
    readout: Tensor | None = None,
    prefix: Tensor | list[Tensor] | None = None,
    start_layer: int = 0,
    columns: Tensor | None = None,
    reuse: PrefixSums | None = None,
) -> Tensor:
    """Run the model with every edge either kept (mask 1) or ablated (mask 0).

    Args:
        tokens: [b, p] token ids.
        ablated: [S, b|1, p|1, d] ablated sender outputs (``Ablation.outputs``).
        mask: [S, R] (bool or float in [0, 1]; fractional values interpolate) in graph order.
            A receiver's input is formed from whichever is fewer, its ablated or its kept
            edges, so gradients w.r.t. ``mask`` reach the weights strictly between 0 and 1.
        readout: [b] positions to unembed; None unembeds every position.
        prefix, start_layer: start at ``start_layer`` with ``prefix`` [k, b, p, d] the differences
            ``out_s - A_s`` of the senders before it (from a run whose receivers before
            ``start_layer`` keep every edge the mask keeps, e.g. the clean run when they all
            keep everything). Saves recomputing layers that the mask does not change.
        columns: with a position-aware mask [S, R, P] (or [V, S, R, P]: V masks in one pass),
            the column of each token [b, p] (``PositionLayout.batch``); the run is then
            :func:`circuitfind.patching_positions.masked_forward_positional`.
        reuse: sums shared by successive runs from the same ``start_layer`` and ``prefix``
            (ACDC's trials; without autograd): see :class:`circuitfind.sender_rows.PrefixSums`.

    Returns:
        logits [b, vocab] at ``readout``, or [b, p, vocab] ([V * b, ...] for V masks).
    """
    if mask.dim() > 2:
        from circuitfind.patching_positions import masked_forward_positional

        if columns is None:
            raise ValueError("a position-aware mask [S, R, P] needs columns= [b, p]")
        return masked_forward_positional(
            model,
            graph,
            tokens,
            attention_mask,
            ablated,
            mask,
            columns,
            readout=readout,
            prefix=prefix,
            start_layer=start_layer,
        )
    if model.cfg.post_norms:
        return _masked_forward_post_norms(
            model, graph, tokens, attention_mask, ablated, mask, readout, prefix, start_layer
        )
    cfg = model.cfg
    H = cfg.n_heads
    mask = mask.to(device=tokens.device, dtype=model.dtype)
    ctx = model.context(tokens, attention_mask)
    b, p = tokens.shape
    A = ablated.expand(ablated.shape[0], b, p, cfg.d_model)
    ones = mask >= 1

    if prefix is None:
        first_rows = (model.embed(tokens, ctx) - A[0]).unsqueeze(0)
    else:
        first_rows = prefix if isinstance(prefix, Tensor) else torch.stack(list(prefix))
        if first_rows.shape[0] != 1 + start_layer * (H + 1):
            raise ValueError("prefix must hold the senders before start_layer")
    if torch.is_grad_enabled():
        reuse = None
    D = SenderRows(first_rows, A.shape[0], reuse)
    if reuse is not None:
        reuse.start(first_rows, D.k, A)
    picked = False

    def ablated_sums() -> dict[int, Tensor]:
        """a_prefix[k] = sum_{s <= k} A_s, at the points receivers read it (the stream entering
        a layer, after its heads, at the end): block sums, not one add per sender."""
        points = sorted({int(graph.n_upstream[r]) for r in range(graph.n_receivers)} | {D.k})
        points = [u for u in points if u >= D.k]
        a_cum, done = A[: points[0]].sum(0), points[0]
        sums = {done - 1: a_cum}
        for u in points[1:]:
            a_cum = a_cum + A[done:u].sum(0)
            sums[u - 1], done = a_cum, u
        return sums

    # These depend on the prefix and the ablated outputs alone: successive trials share them.
    a_prefix = ablated_sums() if reuse is None else reuse.constant("ablated", ablated_sums)
    # The sum of D over the senders so far, at the points receivers read it: {number of
    # senders: sum}. A receiver that keeps most of its edges then costs only its ablated ones.
    total = D.total() if reuse is None else reuse.constant("total", D.total)
    sums = {len(D): total}

    def receiver_inputs(
        groups: list[list[int]], upstream: int, constant: Tensor | float
    ) -> list[Tensor]:
        """Inputs of each group of receivers (all sharing ``upstream`` senders): [b, p,
        len(cols), d], or the shared stream [b, p, d] for a group that keeps every edge. The
        groups that do not are formed in one weighted sum (one pass over the senders)."""
        base = a_prefix[upstream - 1] + constant
        d_total = sums[upstream]
        out: list[Tensor | None] = [None] * len(groups)
        per_col: list[int] = []
        for g, cols in enumerate(groups):
            if bool(ones[:upstream, cols].all()):
                out[g] = base + d_total
            else:
                per_col.append(g)
        if per_col:
            cols = [c for g in per_col for c in groups[g]]
            weights = mask[:upstream, cols]  # [s, c]
            off = (weights != 1).any(1).nonzero()[:, 0]  # senders some column does not keep
            on = (weights != 0).any(1).nonzero()[:, 0]  # senders some column keeps at all
            k = D.k
            nbytes = len(cols) * base.numel() * base.element_size()
            if (
                reuse is not None
                and not picked
                and len(cols) < 2 * k
                and k < upstream
                and reuse.claim(nbytes)
            ):
                # the senders before the start layer: their sum is kept across runs (reading
                # a kept [c, b*p*d] sum costs about what summing c / 3 rows does, at GPT-2 size)
                def make() -> Tensor:
                    flat = base.reshape(1, -1).expand(len(cols), -1)
                    rows = D.pre[:k].reshape(k, -1)
                    return sparse_addmm(flat, weights[:k], rows, flat.new_empty(flat.shape))

                kept = reuse.get(tuple(cols), weights[:k], make)
                new = D.new[: upstream - k].reshape(upstream - k, -1)  # type: ignore[index]
                buf = reuse.out(tuple(kept.shape), kept)
                x = sparse_addmm(kept, weights[k:], new, buf).view(len(cols), *base.shape)
            elif len(off) <= len(on):  # the kept stream minus what is ablated
                x = D.weighted(off, 1 - weights[off], upstream, base + d_total, -1.0, reuse)
            elif len(on) == 0:
                x = base.unsqueeze(0).expand(len(cols), *base.shape)
            else:
                x = D.weighted(on, weights[on], upstream, base, 1.0, reuse)
            at = 0  # x is [c, b, p, d]: each group's inputs as [b, p, len(cols), d]
            for g in per_col:
                out[g] = x[at : at + len(groups[g])].permute(1, 2, 0, 3)
                at += len(groups[g])
        return out  # type: ignore[return-value]

    def receiver_input(cols: list[int], upstream: int, constant: Tensor | float) -> Tensor:
        return receiver_inputs([cols], upstream, constant)[0]

    q_index = None
    for layer in range(start_layer, cfg.n_layers):
        upstream = int(graph.n_upstream[graph.receiver_index[f"a{layer}.h0<q>"]])
        constant = _layer_constant(model, layer, mlp=False)
        first = graph.receiver_index[f"a{layer}.h0<q>"]
        xs = receiver_inputs(
            [list(range(first + j * H, first + (j + 1) * H)) for j in range(3)], upstream, constant
        )
        q_index = None
        if readout is not None and layer == cfg.n_layers - 1:
            # The last layer matters only at each prompt's readout: its queries, head outputs,
            # MLP and the logits are computed there alone (keys and values at every position).
            q_index = readout_index(readout, b)
            D = D.pick(q_index, reuse)

            A, a_prefix = (
                _at_readout(A, a_prefix, q_index)
                if reuse is None
                else reuse.constant(
                    "at readout", functools.partial(_at_readout, A, a_prefix, q_index), q_index
                )
            )
            total = pick_positions(total, q_index)
            sums = {k: pick_positions(v, q_index) for k, v in sums.items()}
            readout = None  # the stream now holds the readout positions only
            picked = True
        z, _ = model.attention(
            layer, xs[0], xs[1], xs[2], ctx, q_index=q_index, disposable=not D.grad
        )
        # each head's output minus its ablated value ([b, 1, ...] in the last layer)
        total = D.append_heads(z, model.w.layers[layer].W_O, A[upstream : upstream + H], total)
        sums = {upstream: sums[upstream], len(D): total}
        m_idx = graph.receiver_index[f"m{layer}"]
        m_up = int(graph.n_upstream[m_idx])
        x_mlp = receiver_input([m_idx], m_up, _layer_constant(model, layer, mlp=True))
        if x_mlp.dim() == 4:
            x_mlp = x_mlp[:, :, 0]
        total = D.accumulate(total, D.append_diff(model.mlp(layer, x_mlp), A[upstream + H]), True)
        sums = {len(D): total}

    final = receiver_input(
        [graph.n_receivers - 1], graph.n_senders, _layer_constant(model, cfg.n_layers, mlp=False)
    )
    if final.dim() == 4:
        final = final[:, :, 0]
    if readout is not None:
        return readout_logits(model, final, readout)
    if q_index is not None:
        return model.unembed(final[:, 0])
    return model.unembed(final)


def _at_readout(
    A: Tensor, a_prefix: dict[int, Tensor], index: Tensor
) -> tuple[Tensor, dict[int, Tensor]]:
    """The ablated outputs [S, b, 1, d] and their running sums at the readout ``index``."""
    picked = pick_positions(A.permute(1, 2, 0, 3), index).permute(2, 0, 1, 3)
    return picked, {k: pick_positions(t, index) for k, t in a_prefix.items()}


def _masked_forward_post_norms(
    model: Model,
    graph: Graph,
    tokens: Tensor,
    attention_mask: Tensor | None,
    ablated: Tensor,
    mask: Tensor,
    readout: Tensor | None,
    prefix: Tensor | list[Tensor] | None,
    start_layer: int,
) -> Tensor:
    """``masked_forward`` for families with post-norms (Gemma-2/3, OLMo-2).

    A layer writes postnorm_L(sum of its heads + b_O) into the stream, which is not a sum over
    heads. So receiver r reads, per upstream layer L, postnorm_L(sum_h (A_h + mask[h, r] D_h) +
    b_O): that layer's heads as r sees them (each kept or ablated for r alone), normalised
    together; the input and MLP senders (an MLP's output includes its own post-norm) enter as
    the plain sum ``A_s + mask[s, r] D_s``. Every edge kept is the clean run and none kept the
    ablated one (for ``resample``: the corrupted run, whose layers normalise the corrupted
    heads' sum) exactly; ablating one edge a{L}.h{j} -> r is patching head j's output in the
    sum that layer L's post-norm sees, for receiver r only.
    """
    cfg = model.cfg
    H = cfg.n_heads
    mask = mask.to(device=tokens.device, dtype=model.dtype)
    ctx = model.context(tokens, attention_mask)
    b, p = tokens.shape
    A = ablated.expand(ablated.shape[0], b, p, cfg.d_model)
    D: list[Tensor] = [model.embed(tokens, ctx) - A[0]] if prefix is None else list(prefix)
    if prefix is not None and len(D) != 1 + start_layer * (H + 1):
        raise ValueError("prefix must hold the senders before start_layer")
    a_pre = []  # per layer: the ablated heads' sum + b_O, the post-norm's input with none kept
    for layer in range(cfg.n_layers):
        first = 1 + layer * (H + 1)
        total = A[first : first + H].sum(0)
        bias = model.w.layers[layer].b_O
        a_pre.append(total + bias if bias is not None else total)

    def receiver_input(cols: list[int], upstream: int) -> Tensor:
        """Inputs of receivers ``cols``: [b, p, len(cols), d], or the shared [b, p, d] when
        every column keeps the same edges."""
        w = mask[:upstream, cols]  # [s, c]
        if not w.requires_grad and bool((w == w[:, :1]).all()):
            w = w[:, :1]  # (with a gradient wanted, each column keeps its own weights)
        x = A[0].unsqueeze(2) + D[0].unsqueeze(2) * w[0][:, None]  # [b, p, c, d]
        for layer in range(cfg.n_layers):
            first = 1 + layer * (H + 1)
            if first >= upstream:
                break
            heads = torch.stack(D[first : first + H])  # [H, b, p, d]
            pre = a_pre[layer].unsqueeze(2) + torch.einsum("sbpd,sc->bpcd", heads, w[first:][:H])
            x = x + model.post_attn(layer, pre)
            m = first + H
            if m < upstream:
                x = x + A[m].unsqueeze(2) + D[m].unsqueeze(2) * w[m][:, None]
        return x[:, :, 0] if x.shape[2] == 1 else x

    for layer in range(start_layer, cfg.n_layers):
        first = graph.receiver_index[f"a{layer}.h0<q>"]
        upstream = int(graph.n_upstream[first])
        xs = [
            receiver_input(list(range(first + j * H, first + (j + 1) * H)), upstream)
            for j in range(3)
        ]
        z, _ = model.attention(layer, xs[0], xs[1], xs[2], ctx)
        heads = model.head_results(layer, z)  # [b, p, h, d] (before the post-norm)
        for h in range(H):
            D.append(heads[:, :, h] - A[upstream + h])
        m_idx = graph.receiver_index[f"m{layer}"]
        x_mlp = receiver_input([m_idx], int(graph.n_upstream[m_idx]))
        D.append(model.mlp(layer, x_mlp) - A[upstream + H])
    final = receiver_input([graph.n_receivers - 1], graph.n_senders)
    if readout is not None:
        return readout_logits(model, final, readout)
    return model.unembed(final)


def edge_deltas(model: Model, cache: ForwardCache, diff: Tensor, senders: Tensor) -> Tensor:
    """How ablating each edge from ``senders`` shifts its receiver's input: [V, b, p, d].

    ``diff`` [S, b, p, d] holds the senders' ``out_s - A_s`` in ``cache``'s run. That is
    ``-diff[s]``, except for the heads of a post-norm layer L, whose edge shifts the receiver
    by postnorm_L(attn_pre_L - diff[s]) - postnorm_L(attn_pre_L) (see
    ``_masked_forward_post_norms``).
    """
    delta = -diff[senders]
    if not model.cfg.post_norms:
        return delta
    H = model.cfg.n_heads
    layer = (senders - 1).div(H + 1, rounding_mode="floor")
    is_head = (senders > 0) & ((senders - 1) % (H + 1) < H)
    delta = delta.clone()
    for i in is_head.nonzero()[:, 0].tolist():
        L = int(layer[i])
        pre = cache.attn_pre[L]
        delta[i] = model.post_attn(L, pre + delta[i]) - cache.attn_post[L]
    return delta


def readout_index(readout: Tensor, rows: int | None = None) -> Tensor:
    """The readout positions as a query index for ``Model.attention``: shared ``[1]`` when
    every prompt reads out at the same position, else ``[rows, 1]`` row by row (``rows``: a
    multiple of the prompts when variants are stacked on the batch axis, variant-major)."""
    if bool((readout == readout[0]).all()):
        return readout[:1]
    reps = 1 if rows is None else rows // readout.shape[0]
    return readout.repeat(reps)[:, None]


def run_from(
    model: Model,
    resid: Tensor,
    ctx: RunContext,
    start_layer: int,
    readout: Tensor,
    prefix: tuple[list[Tensor], int] | None = None,
) -> Tensor:
    """Plain forward from ``resid`` (the stream entering ``start_layer``) to readout logits.

    In the last layer only each prompt's readout query is computed, and the unembedding runs
    only at the readout positions. With ``prefix = (streams, k)`` ``resid`` holds only the
    positions from ``t0`` on, where ``streams[L]`` [b, t0, d] is the stream entering layer L at
    the positions before (the same in every one of the ``k`` variants stacked on the batch
    axis: a clean prefix the run cannot change, causal attention). Each layer then computes
    queries, outputs and MLPs only from ``t0`` on; its keys and values read the whole stream.
    """
    cfg = model.cfg
    if prefix is not None and start_layer >= cfg.n_layers:
        raise ValueError("a run from a clean prefix needs a layer to run")
    start = 0 if prefix is None else prefix[0][start_layer].shape[1]
    q_rest = None
    if prefix is not None:
        q_rest = torch.arange(start, start + resid.shape[1], device=resid.device)

    def whole(layer: int, part: Tensor) -> Tensor:
        if prefix is None:
            return part
        streams, k = prefix
        before = streams[layer].repeat(k, *([1] * (part.dim() - 1)))
        return torch.cat([before, part], dim=1)

    for layer in range(start_layer, cfg.n_layers):
        if layer == cfg.n_layers - 1:
            q_index = readout_index(readout, resid.shape[0])
            full = whole(layer, resid)
            z, _ = model.attention(layer, full, full, full, ctx, q_index=q_index)
            attn = model.attn_out(layer, z)  # [b, 1, d]
            here = pick_positions(full, q_index)
            if cfg.parallel_attn_mlp:
                out = here + attn + model.mlp(layer, here)
            else:
                mid = here + attn
                out = mid + model.mlp(layer, mid)
            return model.unembed(out[:, 0])
        full = whole(layer, resid)
        z, _ = model.attention(layer, full, full, full, ctx, q_index=q_rest)
        attn = model.attn_out(layer, z)
        if cfg.parallel_attn_mlp:
            resid = resid + attn + model.mlp(layer, resid)
        else:
            resid = resid + attn
            resid = resid + model.mlp(layer, resid)
    return readout_logits(model, resid, readout)
