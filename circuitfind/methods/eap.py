"""Edge attribution patching (EAP) and its integrated-gradients variants (EAP-IG).

score(s -> r) = (A_s - out_s) . dm/d(input_r), summed over positions and averaged over prompts:
the first-order estimate of metric(edge ablated) - metric(clean), for every edge at once.

- ``eap``: the gradient at the clean run (one clean forward + backward, plus the ablated run).
- ``eap-ig-inputs``: the gradient averaged over runs whose input embeddings move from the
  ablated to the clean ones (alpha = k/steps, k = 1..steps), as in Hanna et al. 2024.
- ``eap-ig-activations``: the gradient averaged over runs in which every node's output is set to
  A + alpha (clean - A) (gradients still flow through each node), as MIB's EAP-IG-activations.

With ``steps=1`` both IG variants equal ``eap``. Gradients w.r.t. each receiver's own input are
taken through zero "probe" tensors added to that receiver's input only.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitfind.graph import Graph
from circuitfind.model import Model, RunContext
from circuitfind.patching import Ablation, batches, readout_logits

__all__ = ["eap_scores"]

Mode = Literal["eap", "eap-ig-inputs", "eap-ig-activations"]


def _probed_forward(
    model: Model,
    ctx: RunContext,
    tokens: Tensor,
    readout: Tensor,
    *,
    embed: Tensor | None,
    targets: Tensor | None,
    record: list[Tensor] | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """Readout logits and the probes whose gradients are the receiver-input gradients.

    Probes come in receiver order per layer (q [b,p,H,d], k, v, MLP [b,p,d]) and then the
    logits. ``embed`` overrides the input node's output; ``targets`` [S, b, p, d] pins every
    node's output value (the gradient still flows through the node). ``record`` collects the
    node outputs of this run (detached), in sender order, for the caller.
    """
    cfg = model.cfg
    b, p = tokens.shape
    H, d = cfg.n_heads, cfg.d_model
    dtype = model.dtype
    probes: list[Tensor] = []

    def probe(*shape: int) -> Tensor:
        t = torch.zeros(*shape, dtype=dtype, device=tokens.device, requires_grad=True)
        probes.append(t)
        return t

    def pin(out: Tensor, index: int | slice) -> Tensor:
        """The node's output with its value set to the target, its gradient path kept."""
        if targets is not None:
            out = out + (_target(targets, index, out) - out).detach()
        if record is not None:
            record.append(
                out.detach().permute(2, 0, 1, 3) if out.dim() == 4 else out.detach()[None]
            )
        return out

    resid = pin(model.embed(tokens, ctx) if embed is None else embed, 0)
    for layer in range(cfg.n_layers):
        base = 1 + layer * (H + 1)
        x = resid.unsqueeze(2)
        xq, xk, xv = (x + probe(b, p, H, d) for _ in range(3))
        z, _ = model.attention(layer, xq, xk, xv, ctx)
        heads = pin(model.head_results(layer, z), slice(base, base + H))
        attn = heads.sum(2)
        bias = model.attn_bias(layer)
        if bias is not None:
            attn = attn + bias
        if cfg.parallel_attn_mlp:
            mlp = pin(model.mlp(layer, resid + probe(b, p, d)), base + H)
            resid = resid + attn + mlp
        else:
            resid = resid + attn
            mlp = pin(model.mlp(layer, resid + probe(b, p, d)), base + H)
            resid = resid + mlp
    final = resid + probe(b, p, d)
    return readout_logits(model, final, readout), probes


def _target(targets: Tensor, index: int | slice, out: Tensor) -> Tensor:
    if isinstance(index, slice):
        return targets[index].permute(1, 2, 0, 3).expand_as(out)  # [b, p, h, d]
    return targets[index].expand_as(out)


def _group_grads(grads: list[Tensor]) -> Tensor:
    """Probe gradients in receiver order: [R, b, p, d]."""
    out = []
    L = (len(grads) - 1) // 4
    for layer in range(L):
        q, k, v, m = grads[4 * layer : 4 * layer + 4]
        for g in (q, k, v):
            out.append(g.permute(2, 0, 1, 3))  # [H, b, p, d]
        out.append(m.unsqueeze(0))
    out.append(grads[-1].unsqueeze(0))
    return torch.cat(out, dim=0)


def _contract(graph: Graph, diff: Tensor, grads: Tensor) -> Tensor:
    """scores[s, r] = <diff_s, grad_r> over prompts, positions and d_model, for valid edges only:
    receivers sharing an upstream count form one block against that prefix of senders."""
    S, R = graph.n_senders, graph.n_receivers
    out = torch.zeros(S, R, dtype=torch.float64)
    flat_d = diff.reshape(S, -1).float()
    flat_g = grads.reshape(R, -1).float()
    upstream = graph.n_upstream.tolist()
    start = 0
    while start < R:
        stop = start
        while stop < R and upstream[stop] == upstream[start]:
            stop += 1
        up = upstream[start]
        out[:up, start:stop] = (flat_d[:up] @ flat_g[start:stop].T).double().cpu()
        start = stop
    return out


def eap_scores(
    model: Model,
    graph: Graph,
    task: Any,
    ablation: Ablation,
    *,
    mode: Mode = "eap",
    steps: int = 5,
    batch_size: int = 32,
    metric: Any = None,
    progress: bool = True,
) -> Tensor:
    """Attribution scores for every edge: [S, R] (NaN outside ``graph.valid``).

    Cost per batch: the ablated run (for resample, the corrupted forward, no unembedding), then
    one probed forward + backward per step; the clean node outputs are recorded from the clean
    pass itself (alpha = 1), so EAP costs 2 forwards + 1 backward.
    """
    if mode == "eap":
        alphas = [1.0]
    else:
        if steps < 1:
            raise ValueError("steps must be at least 1")
        alphas = [k / steps for k in range(1, steps + 1)]
    S, R = graph.n_senders, graph.n_receivers
    totals = torch.zeros(S, R, dtype=torch.float64)
    n_batches = -(-len(task) // batch_size)
    bar = tqdm(total=n_batches * len(alphas), desc=mode, disable=not progress, unit="pass")
    for batch in batches(task, batch_size, model.device):
        ctx = model.context(batch.clean, batch.attention_mask)
        b, p = batch.clean.shape
        with torch.no_grad():
            A = ablation.outputs(batch)  # [S, b|1, p|1, d]
            clean: Tensor | None = None
            if mode == "eap-ig-activations":
                clean = model.cache(batch.clean, batch.attention_mask).node_outputs()
            elif mode == "eap-ig-inputs":
                embed_clean = model.embed(batch.clean, ctx)
        A_full = A.expand(S, b, p, model.cfg.d_model)
        grad_sum: Tensor | None = None
        for alpha in alphas:
            embed = targets = None
            record: list[Tensor] | None = [] if alpha == 1.0 and clean is None else None
            if mode == "eap-ig-inputs":
                embed = A_full[0] + alpha * (embed_clean - A_full[0])
            elif mode == "eap-ig-activations":
                assert clean is not None
                targets = A_full + alpha * (clean - A_full)
            with torch.enable_grad():
                logits, probes = _probed_forward(
                    model,
                    ctx,
                    batch.clean,
                    batch.readout,
                    embed=embed,
                    targets=targets,
                    record=record,
                )
                value = task.metric_fn(
                    logits.float(), batch.idx, reduce="none", metric=metric
                ).sum()
                grads = torch.autograd.grad(value, probes)
            if record is not None:  # the alpha = 1 pass is the clean run
                clean = torch.cat(record, dim=0)
            g = _group_grads(list(grads))
            grad_sum = g if grad_sum is None else grad_sum.add_(g)
            bar.update(1)
        assert grad_sum is not None and clean is not None
        with torch.no_grad():
            totals += _contract(graph, A_full - clean, grad_sum / len(alphas))
    bar.close()
    scores = (totals / len(task)).float()
    scores[~graph.valid] = float("nan")
    return scores
