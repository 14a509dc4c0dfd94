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
) -> tuple[Tensor, list[Tensor]]:
    """Readout logits and the probes [one per receiver group] whose gradients are receiver-input
    gradients. ``embed`` overrides the input node's output; ``targets`` [S, b, p, d] pins every
    node's output value (the gradient still flows through the node)."""
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
        if targets is None:
            return out
        return out + (_target(targets, index, out) - out).detach()

    resid = model.embed(tokens, ctx) if embed is None else embed
    resid = pin(resid, 0)
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
    """Attribution scores for every edge: [S, R] (NaN outside ``graph.valid``)."""
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
        with torch.no_grad():
            _, cache = model.run_with_cache(batch.clean, batch.attention_mask)
            clean = cache.node_outputs()  # [S, b, p, d]
            A = ablation.outputs(batch).expand_as(clean)
        ctx = model.context(batch.clean, batch.attention_mask)
        grad_sum: Tensor | None = None
        for alpha in alphas:
            embed = targets = None
            if mode == "eap-ig-inputs":
                embed = A[0] + alpha * (clean[0] - A[0])
            elif mode == "eap-ig-activations":
                targets = A + alpha * (clean - A)
            with torch.enable_grad():
                logits, probes = _probed_forward(
                    model, ctx, batch.clean, batch.readout, embed=embed, targets=targets
                )
                value = task.metric_fn(
                    logits.float(), batch.idx, reduce="none", metric=metric
                ).sum()
                grads = torch.autograd.grad(value, probes)
            g = _group_grads(list(grads))
            grad_sum = g if grad_sum is None else grad_sum + g
            bar.update(1)
        assert grad_sum is not None
        with torch.no_grad():
            grad_mean = grad_sum / len(alphas)
            totals += (
                torch.einsum("sbpd,rbpd->sr", (A - clean).float(), grad_mean.float()).double().cpu()
            )
    bar.close()
    scores = (totals / len(task)).float()
    scores[~graph.valid] = float("nan")
    return scores
