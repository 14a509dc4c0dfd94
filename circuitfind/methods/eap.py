"""Edge attribution patching (EAP) and its integrated-gradients variants (EAP-IG).

score(s -> r) = (A_s - out_s) . dm/d(input_r), summed over positions and averaged over prompts:
the first-order estimate of metric(edge ablated) - metric(clean), for every edge at once.

- ``eap``: the gradient at the clean run (one clean forward + backward, plus the ablated run).
- ``eap-ig-inputs``: the gradient averaged over runs whose input embeddings move from the
  ablated to the clean ones (alpha = k/steps, k = 1..steps: a right Riemann sum, the clean point
  in, the ablated one out), as in Hanna et al. 2024's code. EAP-IG's code since its 2025-02
  rewrite (used by MIB) sums k = 0..steps-1 instead (the ablated point in, the clean one out), so
  its one-step score is the gradient at the corrupted input rather than EAP; both converge to
  the same integral. It also allows only resample ablation here; circuitfind starts the path at
  the ablation's own input value (the mean or zero embedding) for the other ablations.
- ``eap-ig-activations``: the gradient averaged over runs in which every node's output is set to
  A + alpha (clean - A) (gradients still flow through each node), all nodes at once: k passes,
  EAP-IG's k(F + B) + F cost. EAP-IG's reference code (used by MIB) instead interpolates one
  layer's output at a time (the rest of the run computed from it) and averages over (2L + 1) k
  passes: a different estimator, equal to this one (and to ``eap``) at one step. (Its mean
  ablation also starts that path at zero, not at the mean its differences use.)

With ``steps=1`` both IG variants equal ``eap``. The run itself is a plain forward (one shared
stream per layer): gradients w.r.t. each receiver's own input come from zero "probe" tensors on
each head's q/k/v projections (and on the MLP and logits inputs), mapped back through the
projection and the norm's Jacobian in closed form (``_InputGrads``), so no per-head copies of
the residual stream are ever formed. Scores are contracted layer by layer over valid senders.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitfind.errors import InputError, UnsupportedModelError
from circuitfind.graph import Graph
from circuitfind.model import Model, RunContext
from circuitfind.ops import rms_norm_jvp, rms_norm_vjp
from circuitfind.patching import readout_logits
from circuitfind.runs import PreparedRuns
from circuitfind.scores import Scores

__all__ = ["eap_scores", "score_eap", "score_eap_ig_activations", "score_eap_ig_inputs"]

Mode = Literal["eap", "eap-ig-inputs", "eap-ig-activations"]


@dataclass
class _Probed:
    """One probed run: readout logits, the probes, and what maps their gradients back."""

    logits: Tensor
    probes: list[Tensor]  # per layer: q, k, v [b, p, H, d_head], MLP input [b, p, d]; final
    attn_inputs: list[Tensor]  # per layer: the stream entering q/k/v (detached) [b, p, d]
    attn_pre: list[Tensor]  # per layer: heads' sum + b_O before the post-norm (detached)


def _probed_forward(
    model: Model,
    ctx: RunContext,
    tokens: Tensor,
    readout: Tensor,
    *,
    embed: Tensor | None,
    targets: Tensor | None,
    ablated: Tensor | None = None,
    diff: Tensor | None = None,
) -> _Probed:
    """A plain forward (one shared stream per layer, no per-head copies) with zero probes.

    A head's q/k/v receivers read the shared stream through the layer's norm and their own
    projection, so the gradient w.r.t. a receiver's input is the norm's vector-Jacobian
    product of W (gradient at the head's projection): the probes sit on the projections
    ([b, p, H, d_head], keys and values already per query head, so GQA groups do not mix), and
    ``_InputGrads`` applies the rest. MLP and logits receivers get [b, p, d] probes on their
    inputs. ``embed`` overrides the input node's output; ``targets`` [S, b, p, d] pins every
    node's output value (the gradient still flows through the node). With ``diff`` [S, b, p, d]
    (float32), the run writes ``ablated - output`` of every node into it, in sender order.
    """
    cfg = model.cfg
    b, p = tokens.shape
    H, d = cfg.n_heads, cfg.d_model
    dtype = model.dtype
    probes: list[Tensor] = []
    attn_inputs: list[Tensor] = []
    attn_pre: list[Tensor] = []

    def probe(*shape: int) -> Tensor:
        t = torch.zeros(*shape, dtype=dtype, device=tokens.device, requires_grad=True)
        probes.append(t)
        return t

    def pin(out: Tensor, index: int) -> Tensor:
        """The node's output with its value set to the target, its gradient path kept."""
        if targets is not None:
            out = out + (targets[index].expand_as(out) - out).detach()
        if diff is not None:
            assert ablated is not None
            torch.sub(ablated[index], out.detach(), out=diff[index])
        return out

    resid = pin(model.embed(tokens, ctx) if embed is None else embed, 0)
    for layer in range(cfg.n_layers):
        base = 1 + layer * (H + 1)
        attn_inputs.append(resid.detach())
        qkv = (probe(b, p, H, cfg.d_head), probe(b, p, H, cfg.d_head), probe(b, p, H, cfg.d_head))
        z, _ = model.attention(layer, resid, resid, resid, ctx, probes=qkv)
        pre = model.attn_pre(layer, z)  # the heads' sum plus b_O
        if targets is not None:  # pin the sum: the same value and gradient as pinning each head
            value = targets[base : base + H].sum(0).expand_as(pre)
            bias = model.w.layers[layer].b_O
            value = value + bias if bias is not None else value
            pre = pre + (value - pre).detach()
        attn_pre.append(pre.detach())
        attn = model.post_attn(layer, pre)  # the post-norm, where the family has one
        if diff is not None:
            assert ablated is not None
            with torch.no_grad():
                heads = model.head_results(layer, z.detach()).permute(2, 0, 1, 3)
                torch.sub(ablated[base : base + H], heads, out=diff[base : base + H])
        if cfg.parallel_attn_mlp:
            mlp = pin(model.mlp(layer, resid + probe(b, p, d)), base + H)
            resid = resid + attn + mlp
        else:
            resid = resid + attn
            mlp = pin(model.mlp(layer, resid + probe(b, p, d)), base + H)
            resid = resid + mlp
    final = resid + probe(b, p, d)
    return _Probed(readout_logits(model, final, readout), probes, attn_inputs, attn_pre)


class _InputGrads:
    """Receiver-input gradients from probe gradients, one layer's block at a time.

    A q/k/v receiver of head h reads x through the norm and W_h [d, d_head], so with g the
    gradient at its projection, dm/dx = J^T (W_h g), J the norm's Jacobian at x. For both norms
    J^T (W_h g) = r (W'_h g - xh (xh . W'_h g) / d), with r the inverse scale, xh the normalised
    x and W'_h = s * W_h (the norm's scale s = offset + weight folded in); LayerNorm also
    centres the columns of W'_h (its mean subtraction). One batched matmul per layer then gives
    every head's gradient, and one fused pass applies the xh term. Without a norm before
    attention (OLMo-2), J is the identity.

    A per-head q/k norm (Qwen3, Gemma-3) needs nothing here: the probes sit before it, so g is
    already the gradient at head h's raw projection. A norm over the whole q (k) projection
    P = y W + b (OLMo-2, y the normed input) couples the heads: receiver h's query is
    N(P)_h = w_h * P_h rho, rho = (mean(P^2) + eps)^-1/2, computed from that receiver's own
    input. Its probe sits after the norm, and the chain rule through N and W gives
    dm/dy = W_h (rho w_h * g) - (rho c_h / D) u with c_h = Ph_h . (w_h * g), Ph = P rho,
    u = sum_j W_j Ph_j and D the projection's width: the first term goes through the batched
    matmul, the second is one shared vector per position scaled per head.
    """

    def __init__(self, model: Model) -> None:
        self.model = model

    def _layer_weights(self, layer: int) -> tuple[Tensor, Tensor]:
        """W' transposed [3H, d_head, d] and W' [3H, d, d_head] (q heads, k, v per query head),
        made for each block and not kept: an fp32 copy of every layer's Q/K/V weights would be
        twice the attention weights of an 8B model in bfloat16 (one layer's is what a block
        needs)."""
        lw = self.model.w.layers[layer]
        kv = self.model._kv_index.to(lw.W_Q.device)
        scale = self.model.norm_scale(lw.ln1_w)
        W = torch.cat([lw.W_Q, lw.W_K[kv], lw.W_V[kv]]).float() * scale[:, None]
        if self.model.cfg.norm == "layernorm" and lw.ln1_w is not None:
            W = W - W.mean(1, keepdim=True)
        return W.transpose(1, 2).contiguous(), W

    def _full_qk(
        self, layer: int, y: Tensor, g: Tensor, kind: str
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The whole-projection q/k norm's chain rule (see the class docstring) for one of q, k:
        y [bp, d] the normed input, g [H, bp, d_head] the gradients after the norm. Returns
        rho w_h * g [H, bp, d_head], the per-head factor -(rho c_h / D) [H, bp, 1] and u
        [bp, d]."""
        lw, cfg = self.model.w.layers[layer], self.model.cfg
        W, b, w = (lw.W_Q, lw.b_Q, lw.q_norm_w) if kind == "q" else (lw.W_K, lw.b_K, lw.k_norm_w)
        assert w is not None
        W = W.float()  # [heads, d, d_head]
        P = torch.einsum("nd,hde->hne", y, W)  # [heads, bp, d_head]
        if b is not None:
            P = P + b.float()[:, None]
        D = P.shape[0] * P.shape[2]
        rho = torch.rsqrt(P.pow(2).sum((0, 2)) / D + lw.qk_norm_eps)[None, :, None]  # [1,bp,1]
        Ph = P * rho
        u = torch.einsum("hne,hde->nd", Ph, W)  # [bp, d]
        wh = w.float().view(-1, cfg.d_head)[:, None]  # [heads, 1, d_head]
        if kind == "k":  # one slot per query head: its kv group's weights and projection
            kv = self.model._kv_index.to(W.device)
            Ph, wh = Ph[kv], wh[kv]
        gw = wh * g
        c = (Ph * gw).sum(-1, keepdim=True)  # [H, bp, 1]
        return rho * gw, -(rho * c) / D, u

    def blocks(self, run: _Probed, grads: list[Tensor]) -> Iterator[Tensor]:
        """[3H + 1, b, p, d] per layer (q[H], k[H], v[H], MLP), then the logits' [1, b, p, d]."""
        cfg = self.model.cfg
        H = cfg.n_heads
        for layer, stream in enumerate(run.attn_inputs):
            b, p, d = stream.shape
            lw = self.model.w.layers[layer]
            gq, gk, gv, gm = grads[4 * layer : 4 * layer + 4]
            g = torch.stack([gq, gk, gv]).float()  # [3, b, p, H, d_head]
            g = g.permute(0, 3, 1, 2, 4).reshape(3 * H, b * p, cfg.d_head)
            x = stream.float().reshape(b * p, d)
            extra: list[tuple[int, Tensor, Tensor]] = []  # (first row, factor, vector)
            if cfg.qk_norm == "full":
                y = self.model.norm(stream, lw.ln1_w, lw.ln1_b, lw.ln1_eps).float()
                y = y.reshape(b * p, d)
                g = g.clone()
                for j, kind in enumerate("qk"):
                    g[j * H : (j + 1) * H], factor, u = self._full_qk(
                        layer, y, g[j * H : (j + 1) * H], kind
                    )
                    if lw.ln1_w is not None:  # u goes back through the norm too
                        if cfg.norm != "rmsnorm":
                            raise UnsupportedModelError(
                                f"EAP on {cfg.family}: a q/k norm over the whole projection "
                                "after a LayerNorm has no closed-form gradient here (no "
                                "supported family has one); use method='exact'"
                            )
                        u = rms_norm_vjp(x, u, lw.ln1_w, lw.ln1_eps, cfg.norm_offset)
                    extra.append((j * H, factor, u))
            Wt, W = self._layer_weights(layer)
            out = torch.empty(3 * H + 1, b * p, d, device=stream.device)
            if lw.ln1_w is None:
                torch.bmm(g, Wt, out=out[: 3 * H])
            else:
                if cfg.norm == "layernorm":
                    x = x - x.mean(-1, keepdim=True)
                r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + lw.ln1_eps)  # [bp, 1]
                xh = x * r
                torch.bmm(g * r, Wt, out=out[: 3 * H])  # r W' g
                c = (torch.matmul(xh, W) * g).sum(-1, keepdim=True) * (r / d)  # [3H, bp, 1]
                out[: 3 * H].addcmul_(c, xh, value=-1.0)
            for first, factor, u in extra:
                out[first : first + H].addcmul_(factor, u)
            out[3 * H] = gm.reshape(b * p, d)
            yield out.view(3 * H + 1, b, p, d)
        yield grads[-1].float()[None]


def _post_norm_diffs(model: Model, diff: Tensor, attn_pre: list[Tensor]) -> Tensor:
    """The sender differences with each post-normed head's mapped through its layer's
    post-norm Jacobian: a head's change dh moves the stream by J_L(attn_pre_L) dh to first
    order (every receiver downstream reads the layer's post-norm of the summed heads), so
    <J dh, g_r> is the head's edge score into r. Input and MLP rows are unchanged (an MLP's
    own post-norm is part of its output)."""
    cfg = model.cfg
    H = cfg.n_heads
    out = diff.clone()
    for layer, pre in enumerate(attn_pre):
        lw = model.w.layers[layer]
        if lw.post_attn_w is None:
            continue
        rows = slice(1 + layer * (H + 1), 1 + layer * (H + 1) + H)
        out[rows] = rms_norm_jvp(pre, diff[rows], lw.post_attn_w, lw.post_attn_eps, cfg.norm_offset)
    return out


def _contract(graph: Graph, diff: Tensor, grads: Tensor, first: int, out: Tensor) -> None:
    """out[s, r] += <diff_s, grad_r> over prompts, positions and d_model, for the receivers
    ``first ..`` of ``grads`` [n, b, p, d] and their valid senders only: receivers sharing an
    upstream count form one block against that prefix of senders."""
    flat_d = diff.reshape(diff.shape[0], -1)
    flat_g = grads.reshape(grads.shape[0], -1)
    upstream = graph.n_upstream[first : first + grads.shape[0]].tolist()
    start = 0
    while start < len(upstream):
        stop = start
        while stop < len(upstream) and upstream[stop] == upstream[start]:
            stop += 1
        up = upstream[start]
        block = flat_d[:up] @ flat_g[start:stop].T
        out[:up, first + start : first + stop] += block
        start = stop


def _column_groups(columns: Tensor, n_columns: int) -> list[tuple[int, Tensor]]:
    """(column, flat [b * p] indices of its tokens) for the columns present in ``columns``."""
    flat = columns.reshape(-1)
    return [(c, (flat == c).nonzero()[:, 0]) for c in range(n_columns) if bool((flat == c).any())]


def _contract_positional(
    graph: Graph,
    diff_cols: list[Tensor],
    grads: Tensor,
    first: int,
    out: Tensor,
    groups: list[tuple[int, Tensor]],
) -> None:
    """``_contract`` without the sum over positions: out[s, r, c] += <diff_s, grad_r> over
    prompts, d_model and the tokens of column c only. ``diff_cols[k]`` is the senders'
    differences at the tokens of ``groups[k]`` ([S, m_k * d]); the same FLOPs as ``_contract``,
    split by column."""
    n = grads.shape[0]
    flat_g = grads.reshape(n, -1, grads.shape[-1])  # [n, b * p, d]
    upstream = graph.n_upstream[first : first + n].tolist()
    for (col, idx), flat_d in zip(groups, diff_cols):
        g_c = flat_g[:, idx].reshape(n, -1)  # [n, m * d]
        start = 0
        while start < n:
            stop = start
            while stop < n and upstream[stop] == upstream[start]:
                stop += 1
            up = upstream[start]
            block = flat_d[:up] @ g_c[start:stop].T
            out[:up, first + start : first + stop, col] += block
            start = stop


class _Contraction:
    """Adds the scores of one block of receivers into ``out``: [S, R] (``_contract``) or, with
    column ``groups``, [S, R, P] (``_contract_positional``, each diff's columns gathered once)."""

    def __init__(
        self, graph: Graph, out: Tensor, groups: list[tuple[int, Tensor]] | None = None
    ) -> None:
        self.graph, self.out, self.groups = graph, out, groups
        self._gathered: tuple[Tensor, list[Tensor]] | None = None

    def __call__(self, diff: Tensor, block: Tensor, first: int) -> None:
        if self.groups is None:
            _contract(self.graph, diff, block, first, self.out)
            return
        if self._gathered is None or self._gathered[0] is not diff:
            flat = diff.reshape(diff.shape[0], -1, diff.shape[-1])  # [S, b * p, d]
            cols = [flat[:, idx].reshape(diff.shape[0], -1) for _, idx in self.groups]
            self._gathered = (diff, cols)
        _contract_positional(self.graph, self._gathered[1], block, first, self.out, self.groups)


def eap_scores(
    runs: PreparedRuns,
    *,
    mode: Mode = "eap",
    steps: int = 5,
    metric: Any = None,
) -> Tensor:
    """Attribution scores for every edge: [S, R] (NaN outside ``graph.valid``), or, when the
    prepared runs carry a position layout (``runs.layout``), for every (edge, column):
    [S, R, P], whose sum over columns is the position-free score.

    Cost per batch: one probed forward + backward per step over the prepared runs' clean and
    ablated values; the clean node outputs are recorded from the clean pass itself (alpha = 1),
    so EAP costs 2 forwards + 1 backward with the ablated (corrupted) pass it shares.

    Memory per batch, float32: the sender differences [S, b, p, d]; with several IG steps also
    the receiver gradients summed over steps [R, b, p, d] (EAP contracts each layer's block at
    once instead). Lower the batch size if they do not fit.
    """
    model, graph, task = runs.model, runs.graph, runs.task
    if mode == "eap":
        alphas = [1.0]
    else:
        if not isinstance(steps, int) or steps < 1:
            raise InputError(f"integrated-gradient steps must be a positive integer; got {steps!r}")
        alphas = [k / steps for k in range(1, steps + 1)]
    S, R = graph.n_senders, graph.n_receivers
    layout = getattr(runs, "layout", None)
    shape = (S, R) if layout is None else (S, R, layout.n_columns)
    # fp32 sums on the model's device: each block is an fp32 product already, and float64 sums
    # of [S, R] would be as large as a narrow model's whole forward + backward
    totals = torch.zeros(*shape, dtype=torch.float32, device=model.device)
    input_grads = _InputGrads(model)
    bar = tqdm(total=len(runs) * len(alphas), desc=mode, disable=not runs.progress, unit="pass")
    for prep in runs:
        batch = prep.batch
        ctx = model.context(batch.clean, batch.attention_mask)
        b, p = batch.clean.shape
        with torch.no_grad():
            # [S, b|1, p|1, d]; streaming runs hand them over, to be overwritten by the diff
            A = prep.take_ablated() if runs.streaming else prep.ablated
            clean: Tensor | None = None
            post = model.cfg.post_norms
            if mode == "eap-ig-activations" or (post and len(alphas) > 1):
                clean = prep.cache.node_outputs()
            if mode == "eap-ig-inputs":
                embed_clean = model.embed(batch.clean, ctx)
        A_full = A.expand(S, b, p, model.cfg.d_model)
        diff: Tensor | None = None  # [S, b, p, d] ablated - clean, float32
        if clean is not None:
            diff = (A_full - clean).float()
        grad_sum: Tensor | None = None  # [R, b, p, d], summed over the IG steps
        groups = None
        if layout is not None:
            groups = _column_groups(layout.batch(batch.idx, p, model.device), layout.n_columns)

        contract = _Contraction(graph, totals, groups)

        for alpha in alphas:
            embed = targets = None
            record = diff is None and alpha == 1.0  # the alpha = 1 pass is the clean run
            if record:
                # a streaming run's corrupted outputs are this batch's own (a mean is shared)
                own = runs.streaming and runs.kind == "resample" and A.is_contiguous()
                if own and A.shape == (S, b, p, model.cfg.d_model) and A.dtype == torch.float32:
                    diff = A  # ablated - clean, written in place: A is not read again
                else:
                    diff = torch.empty(S, b, p, model.cfg.d_model, device=model.device)
            if mode == "eap-ig-inputs":
                embed = A_full[0] + alpha * (embed_clean - A_full[0])
            elif mode == "eap-ig-activations":
                assert clean is not None
                targets = A_full + alpha * (clean - A_full)
            with torch.enable_grad():
                run = _probed_forward(
                    model,
                    ctx,
                    batch.clean,
                    batch.readout,
                    embed=embed,
                    targets=targets,
                    ablated=A_full if record else None,
                    diff=diff if record else None,
                )
                value = prep.metric(task, run.logits, metric).sum()
                grads = list(torch.autograd.grad(value, run.probes))
            with torch.no_grad():
                first = 0
                step_diff = diff
                if post:  # each step's own post-norm Jacobians: contract every step at once
                    assert diff is not None
                    step_diff = _post_norm_diffs(model, diff, run.attn_pre) / len(alphas)
                for block in input_grads.blocks(run, grads):
                    n = block.shape[0]
                    if len(alphas) == 1 or post:  # contract each layer's block at once
                        assert step_diff is not None
                        contract(step_diff, block, first)
                    else:
                        if grad_sum is None:
                            grad_sum = block.new_zeros(R, *block.shape[1:])
                        grad_sum[first : first + n] += block
                    first += n
            del run, grads
            bar.update(1)
        if grad_sum is not None:
            assert diff is not None
            with torch.no_grad():
                contract(diff, grad_sum.div_(len(alphas)), 0)
        del A, A_full, diff, step_diff, grad_sum, clean, contract
        runs.done_with(prep)
    bar.close()
    scores = totals.div_(len(task)).cpu()
    scores[~graph.valid] = float("nan")  # (with positions: every column of a non-edge)
    return scores


def score_eap(runs: PreparedRuns, *, metric: Any = None) -> Scores:
    """EAP: (ablated - clean sender output) . d metric / d(receiver input), every edge."""
    return Scores(eap_scores(runs, mode="eap", metric=metric))


def score_eap_ig_inputs(runs: PreparedRuns, *, steps: int = 5, metric: Any = None) -> Scores:
    """EAP-IG over the input embeddings, ``steps`` points of the path (alpha = k / steps)."""
    return Scores(eap_scores(runs, mode="eap-ig-inputs", steps=steps, metric=metric))


def score_eap_ig_activations(runs: PreparedRuns, *, steps: int = 5, metric: Any = None) -> Scores:
    """EAP-IG interpolating every node's activations between ablated and clean."""
    return Scores(eap_scores(runs, mode="eap-ig-activations", steps=steps, metric=metric))
