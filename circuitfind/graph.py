"""The computational graph: nodes that write to the residual stream, receivers that read it.

Nodes: ``input`` (embeddings), ``a{L}.h{H}`` (attention heads), ``m{L}`` (MLPs), ``logits``.
Every node but ``logits`` is a *sender*; every receiver reads the sum of the outputs of the
senders upstream of it. Receivers: each head's query, key and value inputs
(``a{L}.h{H}<q>``, ``<k>``, ``<v>``), each MLP and the logits. An edge is one term of a receiver's
sum: ``a0.h3->a1.h2<k>``, ``m0->m1``, ``m1->logits`` (the names EAP-IG and MIB use).

Senders are indexed in topological order (``input``, layer 0's heads, ``m0``, layer 1's heads,
...). Receivers are indexed layer by layer (all heads' ``<q>``, all ``<k>``, all ``<v>``, then the
MLP), then ``logits``. The senders feeding a receiver are always a prefix of the sender order,
so ``graph.n_upstream[r]`` describes receiver r's edges completely; dense score matrices are
``[n_senders, n_receivers]`` with ``graph.valid`` marking real edges.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from circuitfind.errors import InputError
from circuitfind.names import parse_edge, parse_node

if TYPE_CHECKING:
    import networkx as nx

    from circuitfind.model import Model, ModelConfig

__all__ = ["Edge", "Graph", "Node", "Receiver", "parse_edge", "parse_node"]

NodeKind = Literal["input", "head", "mlp", "logits"]
QKV = Literal["q", "k", "v"]


@dataclass(frozen=True)
class Node:
    """A graph node: ``name`` is canonical (``a9.h6``), ``label`` is for people (``L9H6``)."""

    name: str
    kind: NodeKind
    layer: int | None = None
    head: int | None = None

    @property
    def label(self) -> str:
        if self.kind == "head":
            return f"L{self.layer}H{self.head}"
        if self.kind == "mlp":
            return f"MLP{self.layer}"
        return self.name


@dataclass(frozen=True)
class Receiver:
    """A place that reads the residual stream: a head's q/k/v input, an MLP, or the logits."""

    name: str  # a1.h2<q>, m1, logits
    node: str  # a1.h2, m1, logits
    qkv: QKV | None
    layer: int | None
    index: int
    head: int | None = None


@dataclass(frozen=True)
class Edge:
    """One term of a receiver's input: ``sender -> receiver`` (``qkv`` for head receivers)."""

    sender: str
    receiver: str  # the receiving *node* (a1.h2, m1, logits)
    qkv: QKV | None
    sender_index: int
    receiver_index: int

    @property
    def name(self) -> str:
        suffix = f"<{self.qkv}>" if self.qkv else ""
        return f"{self.sender}->{self.receiver}{suffix}"


# ---------------------------------------------------------------------------- the graph
class Graph:
    """Nodes, receivers and edges of a model (see the module docstring for the ordering)."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        L, H = cfg.n_layers, cfg.n_heads
        senders: list[Node] = [Node("input", "input")]
        for layer in range(L):
            senders += [Node(f"a{layer}.h{h}", "head", layer, h) for h in range(H)]
            senders.append(Node(f"m{layer}", "mlp", layer))
        self.senders: list[Node] = senders
        self.nodes: dict[str, Node] = {n.name: n for n in senders}
        self.nodes["logits"] = Node("logits", "logits")

        receivers: list[Receiver] = []
        upstream: list[int] = []
        for layer in range(L):
            before = 1 + layer * (H + 1)
            for qkv in ("q", "k", "v"):
                for h in range(H):
                    name = f"a{layer}.h{h}"
                    receivers.append(
                        Receiver(f"{name}<{qkv}>", name, qkv, layer, len(receivers), h)  # type: ignore[arg-type]
                    )
                    upstream.append(before)
            receivers.append(Receiver(f"m{layer}", f"m{layer}", None, layer, len(receivers)))
            upstream.append(before if cfg.parallel_attn_mlp else before + H)
        receivers.append(Receiver("logits", "logits", None, None, len(receivers)))
        upstream.append(len(senders))
        self.receivers: list[Receiver] = receivers
        self.n_upstream = torch.tensor(upstream)  # [receiver]
        self.sender_index = {n.name: i for i, n in enumerate(senders)}
        self.receiver_index = {r.name: r.index for r in receivers}

    @classmethod
    def from_model(cls, model: Model) -> Graph:
        return cls(model.cfg)

    @property
    def n_senders(self) -> int:
        return len(self.senders)

    @property
    def n_receivers(self) -> int:
        return len(self.receivers)

    @cached_property
    def valid(self) -> Tensor:
        """[sender, receiver] bool: True where sender -> receiver is an edge."""
        return torch.arange(self.n_senders)[:, None] < self.n_upstream[None, :]

    @property
    def n_edges(self) -> int:
        return int(self.n_upstream.sum())

    @cached_property
    def edges(self) -> dict[str, Edge]:
        """Every edge by canonical name, in receiver order then sender order."""
        out: dict[str, Edge] = {}
        for r in self.receivers:
            for s in range(int(self.n_upstream[r.index])):
                e = Edge(self.senders[s].name, r.node, r.qkv, s, r.index)
                out[e.name] = e
        return out

    def edge(self, spelling: str) -> Edge:
        """An edge by any spelling of its name."""
        name = parse_edge(spelling, self.cfg)
        try:
            return self.edges[name]
        except KeyError:
            raise InputError(
                f"{spelling!r} is not an edge of this model: its sender is not upstream of its "
                "receiver"
                + (
                    " (MLPs read their own layer's stream in parallel-residual models)"
                    if self.cfg.parallel_attn_mlp
                    else ""
                )
            ) from None

    def node(self, spelling: str) -> Node:
        return self.nodes[parse_node(spelling, self.cfg)]

    def edge_name(self, sender_index: int, receiver_index: int) -> str:
        r = self.receivers[receiver_index]
        suffix = f"<{r.qkv}>" if r.qkv else ""
        return f"{self.senders[sender_index].name}->{r.node}{suffix}"

    def topological_order(self) -> list[str]:
        """Node names, every sender before its receivers."""
        return [n.name for n in self.senders] + ["logits"]

    def to_networkx(self, scores: dict[str, float] | None = None) -> nx.MultiDiGraph:
        """A ``networkx.MultiDiGraph`` over node names; parallel q/k/v edges have keys q, k, v."""
        import networkx as nx

        g = nx.MultiDiGraph()
        for node in self.nodes.values():
            g.add_node(
                node.name, kind=node.kind, layer=node.layer, head=node.head, label=node.label
            )
        for name, e in self.edges.items():
            attrs: dict[str, Any] = {"name": name, "qkv": e.qkv}
            if scores is not None and name in scores:
                attrs["score"] = scores[name]
            g.add_edge(e.sender, e.receiver, key=e.qkv or "", **attrs)
        return g

    def __repr__(self) -> str:
        return f"Graph({len(self.nodes)} nodes, {self.n_receivers} receivers, {self.n_edges} edges)"
