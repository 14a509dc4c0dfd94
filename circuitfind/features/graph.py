"""Attribution graphs: direct effects between active features over one prompt.

The local replacement model (``frozen``) keeps the real run's attention patterns and norm
scales, replaces each site that has a transcoder by its active features plus one error node per
position (the real output minus the transcoder's, so the output is exact), and keeps token
embeddings (the ``input`` node, token plus position) as input nodes. A site without a
transcoder is either linear in the frozen model (attention: its OV path carries effects through)
or (an MLP) a constant error-like node per position. Everything between nodes is then linear,
so a node's input (a feature's pre-activation, which equals its activation when active; the
target logit) is exactly the sum of its incoming edges plus a constant ``bias`` (norm, value,
output, encoder and decoder biases pushed through the frozen model): ``completeness`` checks it.

Edges are read by pushing each source's write through the frozen model (a batch of sources a
pass, biases off). Edges into attention-site features are also split by the head they pass
through (``head_weights``): those are exact, since such a feature reads one attention layer.

Node order follows circuit-tracer: features, errors, tokens, logit; ``adjacency[target,
source]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from circuitfind.errors import InputError
from circuitfind.features.frozen import FrozenRun, freeze, frozen_forward, frozen_readout
from circuitfind.features.prune import PruneResult, prune_graph
from circuitfind.features.transcoder import Transcoder, TranscoderSet, on_device
from circuitfind.model import Model

__all__ = ["AttributionGraph", "GraphNode", "attribution_graph", "propagate"]

Write = tuple[str, int, Tensor]  # (site or "embed", position, vector [d_model])


@dataclass(frozen=True)
class GraphNode:
    """One node: a feature, an error (or unreplaced MLP) node, a token, or the target logit."""

    kind: str  # feature | error | token | logit
    layer: int  # -1 for tokens, n_layers for the logit
    pos: int
    site: str | None = None  # a{L} / m{L} for features and errors
    feature: int | None = None
    activation: float = 0.0  # features: activation; logit: its value; others: |write|
    token: str = ""

    @property
    def id(self) -> str:
        if self.kind == "feature":
            return f"{self.site}.f{self.feature}@{self.pos}"
        if self.kind == "error":
            return f"{self.site}.err@{self.pos}"
        if self.kind == "token":
            return f"tok@{self.pos}"
        return f"logit@{self.pos}"


@dataclass
class AttributionGraph:
    """A prompt's attribution graph (module docstring); ``prune`` fills ``pruning``."""

    nodes: list[GraphNode]
    adjacency: Tensor  # [n, n] float64, rows = targets, columns = sources
    bias: Tensor  # [n] constant part of each target's input
    value: Tensor  # [n] each target's input in the real run (pre-activation, logit)
    head_weights: dict[int, Tensor]  # target row -> [n, head] (attention-site features)
    tokens: list[int]
    token_strs: list[str]
    target: dict[str, Any]
    n_layers: int
    pruning: PruneResult | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # (frozen run, transcoders in the graph's dtype, each source's write): for QK attribution
    # and the intervention check; not serialised
    state: tuple[FrozenRun, dict[str, Transcoder], list[Write]] | None = field(
        default=None, repr=False
    )

    @property
    def logit_index(self) -> int:
        return len(self.nodes) - 1

    def index(self, node_id: str) -> int:
        for i, n in enumerate(self.nodes):
            if n.id == node_id:
                return i
        raise InputError(f"no node {node_id!r} in the graph")

    def completeness(self) -> Tensor:
        """|Σ incoming edges + bias − real input| of every target row (features and logit)."""
        rows = [i for i, n in enumerate(self.nodes) if n.kind in ("feature", "logit")]
        idx = torch.tensor(rows, dtype=torch.long)
        total = self.adjacency[idx].sum(1) + self.bias[idx]
        return (total - self.value[idx]).abs()

    def pruned(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneResult:
        """circuit-tracer's pruning by influence on the target, leaving ``pruning`` as it is."""
        n_tokens = sum(n.kind == "token" for n in self.nodes)
        n_features = sum(n.kind == "feature" for n in self.nodes)
        return prune_graph(self.adjacency, n_features, n_tokens, 1, node_threshold, edge_threshold)

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneResult:
        """circuit-tracer's pruning by influence on the target (stored in ``pruning``)."""
        self.pruning = self.pruned(node_threshold, edge_threshold)
        self.meta.update(node_threshold=node_threshold, edge_threshold=edge_threshold)
        return self.pruning

    def top_path(self, start: int | None = None, max_len: int = 10) -> list[int]:
        """From the logit back to an input: at each step the incoming edge with the largest
        |weight| among kept edges (all edges before pruning)."""
        i = self.logit_index if start is None else start
        path = [i]
        A = self.adjacency.abs()
        if self.pruning is not None:
            A = A * self.pruning.edge_mask
        for _ in range(max_len):
            row = A[i]
            if row.max() <= 0:
                break
            i = int(row.argmax())
            path.append(i)
        return path

    def heads_of(self, target: int, source: int) -> Tensor | None:
        """Per-head split [head] of the edge source -> target (attention-site targets)."""
        hw = self.head_weights.get(target)
        return None if hw is None else hw[source]

    def to_dict(self, *, pruned: bool = True) -> dict[str, Any]:
        """Plain JSON (nodes, edges with heads, target, completeness) for an explorer."""
        keep_n = self.pruning.node_mask if pruned and self.pruning is not None else None
        keep_e = self.pruning.edge_mask if pruned and self.pruning is not None else None
        infl = self.pruning.influence if self.pruning is not None else None
        nodes = []
        for i, n in enumerate(self.nodes):
            if keep_n is not None and not keep_n[i]:
                continue
            d = {
                "id": n.id,
                "kind": n.kind,
                "layer": n.layer,
                "pos": n.pos,
                "site": n.site,
                "feature": n.feature,
                "activation": n.activation,
                "token": n.token,
            }
            if infl is not None:
                d["influence"] = float(infl[i])
            nodes.append(d)
        ids = {d["id"] for d in nodes}
        edges = []
        nz = self.adjacency.nonzero().tolist()
        for t, s in nz:
            if keep_e is not None and not keep_e[t, s]:
                continue
            src, dst = self.nodes[s].id, self.nodes[t].id
            if src not in ids or dst not in ids:
                continue
            e: dict[str, Any] = {
                "source": src,
                "target": dst,
                "weight": float(self.adjacency[t, s]),
            }
            hw = self.heads_of(t, s)
            if hw is not None:
                e["heads"] = {f"a{self.nodes[t].layer}.h{h}": float(w) for h, w in enumerate(hw)}
            edges.append(e)
        return {
            "tokens": self.token_strs,
            "target": self.target,
            "nodes": nodes,
            "edges": edges,
            "completeness_max_error": float(self.completeness().max()),
            "meta": self.meta,
        }


def _target(
    model: Model, fr: FrozenRun, target: int | str | None, pos: int | None, wrong: int | str | None
) -> tuple[int, int, int | None]:
    n_pos = fr.tokens.shape[0]
    p = n_pos - 1 if pos is None else (pos if pos >= 0 else n_pos + pos)
    if not 0 <= p < n_pos:
        raise InputError(f"target position {pos} is outside the prompt of {n_pos} tokens")

    def tid(t: int | str) -> int:
        if isinstance(t, str):
            from circuitfind.inspect._common import token_ids

            return int(token_ids(model, t, 1)[0])
        if not 0 <= int(t) < model.cfg.d_vocab:
            raise InputError(f"target token {t} is outside the vocabulary")
        return int(t)

    tok = int(fr.logits[p].argmax()) if target is None else tid(target)
    return tok, p, None if wrong is None else tid(wrong)


def _decode(model: Model, ids: list[int]) -> list[str]:
    tok = model.tokenizer
    if tok is None:
        return [str(i) for i in ids]
    return [tok.decode([i]) for i in ids]


def propagate(
    model: Model,
    fr: FrozenRun,
    tcs: dict[str, Transcoder],
    chunk: list[Write],
    *,
    affine: bool,
    dtype: torch.dtype,
    on_read: Callable[[str, Tensor, Tensor | None], None] | None = None,
    on_resid: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """Push a batch of single-source writes (one per batch row) through the frozen model.

    A site with a transcoder writes only its injected sources (plus its skip path, and b_dec
    when ``affine``); attention without one passes its frozen OV output on; an MLP without one
    writes only its injected (error-like) node. ``on_read(site, x, per_head)`` sees what each
    site reads. Returns the final stream [B, pos, d_model].
    """
    n_pos, d = fr.embed.shape
    B = max(1, len(chunk))
    dev = fr.embed.device
    inj: dict[str, Tensor] = {}
    for b, (site, q, vec) in enumerate(chunk):
        inj.setdefault(site, torch.zeros(B, n_pos, d, dtype=dtype, device=dev))[b, q] = vec
    zero = torch.zeros(B, n_pos, d, dtype=dtype, device=dev)

    def write(site: str, x: Tensor, per_head: Tensor | None) -> Tensor:
        if on_read is not None:
            on_read(site, x, per_head)
        w = inj.get(site, zero)
        if site in tcs:
            tc = tcs[site]
            if tc.W_skip is not None:
                w = w + tc.skip(x)
            return w + tc.b_dec if affine else w
        if site.startswith("a"):
            return w + x
        return w

    emb = inj.get("embed", zero)
    return frozen_forward(model, fr, emb, write, affine=affine, on_resid=on_resid)


def attribution_graph(
    model: Model,
    transcoders: TranscoderSet | dict[str, Transcoder],
    prompt: Tensor | list[int] | str,
    *,
    target: int | str | None = None,
    wrong: int | str | None = None,
    pos: int | None = None,
    node_threshold: float | None = 0.8,
    edge_threshold: float = 0.98,
    batch_size: int = 256,
    dtype: torch.dtype = torch.float64,
) -> AttributionGraph:
    """The attribution graph of ``prompt`` for the logit of ``target`` (default: the model's
    top token) at ``pos`` (default: the last), minus ``wrong``'s logit when given.

    Pruned with circuit-tracer's node/edge thresholds unless ``node_threshold`` is None; the
    full adjacency is kept either way.
    """
    if isinstance(prompt, str):
        ids = model.to_tokens(prompt)[0]
    else:
        ids = torch.as_tensor(prompt, dtype=torch.long).reshape(-1)
    fr = freeze(model, ids)
    dev = fr.embed.device
    tcs = on_device(transcoders, dev, dtype)
    for s, tc in tcs.items():
        if s not in fr.site_in:
            raise InputError(f"transcoder site {s} is not in this {model.cfg.n_layers}-layer model")
        if tc.cfg.d_in != fr.site_in[s].shape[-1]:
            width = fr.site_in[s].shape[-1]
            raise InputError(
                f"transcoder {s} reads width {tc.cfg.d_in} but this model's {s} has width "
                f"{width}; train transcoders for this model (circuitfind features train)"
            )
    tok, p, wrong_id = _target(model, fr, target, pos, wrong)
    n_pos = fr.embed.shape[0]
    strs = _decode(model, fr.tokens.tolist())

    # ---- nodes and their writes
    nodes: list[GraphNode] = []
    writes: list[Write] = []
    values: list[float] = []
    feat_rows: dict[str, list[tuple[int, int, int]]] = {}  # site -> (row, pos, feature)
    errors: list[tuple[GraphNode, str, int, Tensor]] = []
    with torch.no_grad():
        for site in sorted(fr.site_in, key=lambda s: (int(s[1:]), s[0] == "m")):
            x = fr.site_in[site].to(dtype)
            out = fr.site_out[site].to(dtype)
            layer = int(site[1:])
            if site in tcs:
                tc = tcs[site]
                pre = tc.preact(x)
                act = tc.activate(pre)
                err = out - tc.decode(act, x)
                for q, f in act.nonzero().tolist():
                    feat_rows.setdefault(site, []).append((len(nodes), q, f))
                    nodes.append(GraphNode("feature", layer, q, site, f, float(act[q, f])))
                    writes.append((site, q, act[q, f] * tc.W_dec[f]))
                    values.append(float(pre[q, f]))
                for q in range(n_pos):
                    errors.append((GraphNode("error", layer, q, site), site, q, err[q]))
            elif site.startswith("m"):  # an MLP without a transcoder: a constant node
                for q in range(n_pos):
                    errors.append((GraphNode("error", layer, q, site), site, q, out[q]))
        for node, site, q, vec in errors:
            nodes.append(
                GraphNode(node.kind, node.layer, q, site, None, float(vec.norm()), strs[q])
            )
            writes.append((site, q, vec))
            values.append(0.0)
        for q in range(n_pos):
            e = fr.embed[q].to(dtype)
            nodes.append(GraphNode("token", -1, q, None, None, float(e.norm()), strs[q]))
            writes.append(("embed", q, e))
            values.append(0.0)

        u = model.w.W_U[:, tok].to(dtype)
        logit = float(fr.logits[p, tok])
        if wrong_id is not None:
            u = u - model.w.W_U[:, wrong_id].to(dtype)
            logit -= float(fr.logits[p, wrong_id])
        b_u = 0.0
        if model.w.b_U is not None:
            b_u = float(model.w.b_U[tok]) - (
                float(model.w.b_U[wrong_id]) if wrong_id is not None else 0.0
            )
        nodes.append(GraphNode("logit", model.cfg.n_layers, p, activation=logit, token=strs[p]))
        values.append(logit)

    n = len(nodes)
    n_heads = model.cfg.n_heads
    A = torch.zeros(n, n, dtype=dtype)
    bias = torch.zeros(n, dtype=dtype)
    head_rows = {
        r: torch.zeros(n, n_heads, dtype=dtype)
        for s, rows in feat_rows.items()
        if s.startswith("a")
        for r, _, _ in rows
    }

    def run(chunk: list[Write], affine: bool) -> tuple[Tensor, dict[int, Tensor]]:
        """Targets' inputs [B, n] and head splits for one batch of single-source writes."""
        out = torch.zeros(max(1, len(chunk)), n, dtype=dtype, device=dev)
        heads: dict[int, Tensor] = {}

        def read(site: str, x: Tensor, per_head: Tensor | None) -> None:
            rows = feat_rows.get(site, [])
            if not rows:
                return
            tc = tcs[site]
            r_idx = torch.tensor([r for r, _, _ in rows], device=dev)
            q_idx = torch.tensor([q for _, q, _ in rows], device=dev)
            f_idx = torch.tensor([f for _, _, f in rows], device=dev)
            enc = tc.W_enc[:, f_idx]  # [d_in, n_rows]
            out[:, r_idx] = torch.einsum("bnd,dn->bn", x[:, q_idx], enc)
            if affine:
                out[:, r_idx] += tc.b_enc[f_idx]
            if per_head is not None and not affine:
                split = torch.einsum("bnhd,dn->bnh", per_head[:, q_idx], enc)
                for j, r in enumerate(r_idx.tolist()):
                    heads[r] = split[:, j]

        resid = propagate(model, fr, tcs, chunk, affine=affine, dtype=dtype, on_read=read)
        final = frozen_readout(model, fr, resid, affine)[:, p]
        out[:, n - 1] = final @ u + (b_u if affine else 0.0)
        return out, heads

    with torch.no_grad():
        const, _ = run([], affine=True)
        bias = const[0].cpu()
        bias[[i for i, nd in enumerate(nodes) if nd.kind in ("error", "token")]] = 0.0
        for start in range(0, len(writes), batch_size):
            chunk = writes[start : start + batch_size]
            out, heads = run(chunk, affine=False)
            A[:, start : start + len(chunk)] = out.T.cpu()
            for r, split in heads.items():
                head_rows[r][start : start + len(chunk)] = split.cpu()
    # a feature's own readout happens before its write: no self-edges; sources never targets
    A.fill_diagonal_(0.0)
    src_only = [i for i, nd in enumerate(nodes) if nd.kind in ("error", "token")]
    A[src_only] = 0.0
    graph = AttributionGraph(
        nodes=nodes,
        adjacency=A,
        bias=bias,
        value=torch.tensor(values, dtype=dtype),
        head_weights=head_rows,
        tokens=fr.tokens.tolist(),
        token_strs=strs,
        target={
            "token": tok,
            "token_str": _decode(model, [tok])[0],
            "pos": p,
            "wrong": wrong_id,
            "value": logit,
        },
        n_layers=model.cfg.n_layers,
        meta={
            "model": model.cfg.name,
            "sites": sorted(tcs),
            "n_features": len([x for x in nodes if x.kind == "feature"]),
        },
        state=(fr, tcs, writes),
    )
    if node_threshold is not None:
        graph.prune(node_threshold, edge_threshold)
    return graph
