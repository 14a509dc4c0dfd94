"""A circuit: scored edges of a graph, the subset kept, and where it came from.

Saved as JSON in the field's shape (EAP-IG / MIB):
``{"cfg": {model shape}, "nodes": {name: {"in_graph": bool, ...}},
"edges": {name: {"score": float, "in_graph": bool}}, "meta": {...}}``.
Reading files another tool wrote works: EAP-IG writes ``nodes`` as ``{name: bool}`` and may
leave scores ``null``; both are accepted (a circuit without any score has ``has_scores``
False: it cannot be ranked, so it has no CPR / CMD). Files are validated before anything is
allocated (model shape within :data:`MAX_LAYERS` x :data:`MAX_HEADS`, numeric scores, known
edge names) and written as strict JSON (``null``, never ``NaN``), atomically.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from circuitfind.checkpoint import atomic_write_text
from circuitfind.errors import InputError
from circuitfind.graph import Graph, parse_edge, parse_node
from circuitfind.model import ModelConfig
from circuitfind.positions import position_edge_name, split_position_edge
from circuitfind.strict_json import dumps

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["MAX_CELLS", "MAX_HEADS", "MAX_LAYERS", "Circuit", "EdgeScores", "graph_from_shape"]

MAX_LAYERS = 1024  # bounds on a circuit file's model shape (the largest models have ~130)
MAX_HEADS = 1024
MAX_CELLS = 2_000_000_000  # senders x receivers of the score matrix (8 GB of float32)


class EdgeScores(dict[str, float]):
    """Edge name -> score; a lookup by any common spelling of the edge finds it too."""

    def __init__(self, graph: Graph, scores: dict[str, float]) -> None:
        super().__init__(scores)
        self._cfg = graph.cfg

    def __missing__(self, key: str) -> float:
        canonical = _canonical(key, self._cfg)
        if canonical == key or not dict.__contains__(self, canonical):
            raise KeyError(key)
        return dict.__getitem__(self, canonical)

    def __contains__(self, key: object) -> bool:
        if dict.__contains__(self, key):
            return True
        try:
            return isinstance(key, str) and dict.__contains__(self, _canonical(key, self._cfg))
        except InputError:
            return False


def _canonical(name: str, cfg: ModelConfig) -> str:
    """The canonical name of an edge, or of a position edge ``edge@column``."""
    edge, col = split_position_edge(name)
    canonical = parse_edge(edge, cfg)
    return canonical if col is None else position_edge_name(canonical, col)


def graph_from_shape(n_layers: int, n_heads: int, parallel_attn_mlp: bool = False) -> Graph:
    """A graph from the model shape alone (what a circuit file records)."""
    cfg = ModelConfig(
        family="unknown",
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_heads,
        d_model=0,
        d_head=0,
        d_mlp=0,
        d_vocab=0,
        n_ctx=None,
        parallel_attn_mlp=parallel_attn_mlp,
        norm="layernorm",
        gated_mlp=False,
        positional="learned",
        attn_scale=(1.0,) * n_layers,
        window=(None,) * n_layers,
    )
    return Graph(cfg)


@dataclass
class Circuit:
    """Scores for the edges of ``graph`` and the edges kept in the circuit.

    Attributes:
        graph: the model's graph.
        score_matrix: [sender, receiver] float tensor of edge scores (NaN where not scored;
            entries outside ``graph.valid`` are ignored). ``circuit.scores`` is the same as a
            mapping from edge names.
        in_graph: [sender, receiver] bool tensor, True for edges in the circuit.
        meta: model, task, method, ablation, metric values, timing, versions, seed, ...
        node_scores: optional per-node scores (node-level methods).
        runs: the prepared runs that scored it (``circuitfind.runs.PreparedRuns``; not saved),
            reused by ``prune`` and ``evaluate`` on the same model and task.
        positions: for position-aware edges, the column names (positions ``"0", "1", ...``
            or spans ``"S1", "IO", ...``; see :mod:`circuitfind.positions`); ``score_matrix``
            and ``in_graph`` are then [sender, receiver, column] and every edge name carries
            its column: ``a0.h3->a1.h2<q>@5``, ``m1->logits@END``.
    """

    graph: Graph
    score_matrix: Tensor
    in_graph: Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    node_scores: dict[str, float] | None = None
    runs: Any = field(default=None, repr=False, compare=False)
    positions: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        shape: tuple[int, ...] = (self.graph.n_senders, self.graph.n_receivers)
        if self.positions is not None:
            self.positions = tuple(str(p) for p in self.positions)
            shape = (*shape, len(self.positions))
        if tuple(self.score_matrix.shape) != shape or tuple(self.in_graph.shape) != shape:
            raise ValueError(f"score_matrix and in_graph must be {shape}")
        self.score_matrix = self.score_matrix.detach().float().cpu()
        self.in_graph = self.in_graph.detach().bool().cpu() & self.valid
        self._scores: EdgeScores | None = None

    @property
    def valid(self) -> Tensor:
        """``graph.valid``, with a column axis for position-aware circuits: [S, R(, P)]."""
        valid = self.graph.valid
        if self.positions is None:
            return valid
        return valid[..., None].expand(*valid.shape, len(self.positions))

    def name_at(self, index: tuple[int, ...] | list[int]) -> str:
        """The name of the (edge) or (edge, column) at ``index`` of the score matrix."""
        name = self.graph.edge_name(index[0], index[1])
        if self.positions is None:
            return name
        return position_edge_name(name, self.positions[index[2]])

    def collapsed(self) -> Circuit:
        """The position-free circuit: scores summed over columns (NaN where no column has a
        score), an edge kept when any of its columns is. Identity without positions."""
        if self.positions is None:
            return self
        scored = ~torch.isnan(self.score_matrix)
        total = self.score_matrix.nan_to_num(0.0).sum(-1)
        total[~scored.any(-1)] = float("nan")
        meta = {**self.meta, "collapsed_from_positions": list(self.positions)}
        return Circuit(
            self.graph, total, self.in_graph.any(-1), meta, self.node_scores, runs=self.runs
        )

    # ------------------------------------------------------------------ views
    @property
    def edge_names(self) -> list[str]:
        """Names of the edges in the circuit."""
        return [self.name_at(tuple(ix)) for ix in self.in_graph.nonzero().tolist()]

    @property
    def n_edges(self) -> int:
        return int(self.in_graph.sum())

    @property
    def n_edges_total(self) -> int:
        """Edges of the graph: (edge, column) terms for a position-aware circuit."""
        return self.graph.n_edges * (1 if self.positions is None else len(self.positions))

    @property
    def has_scores(self) -> bool:
        """Whether any edge has a score (a MIB / EAP-IG file may carry only the kept edges,
        with ``null`` scores: such a circuit cannot be ranked, so it has no CPR / CMD)."""
        return bool((self.valid & ~torch.isnan(self.score_matrix)).any())

    @property
    def scores(self) -> EdgeScores:
        """Every scored edge's name and score: ``circuit.scores["a0.h3->a1.h0<k>"]``.

        A ``dict`` keyed by canonical edge names; a lookup also accepts any common spelling
        (``"L0H3->L1H0<k>"``, ``"0.3->1.0<k>"``). Edges never scored (ACDC skips some) are
        absent. The tensor behind it is ``score_matrix``.
        """
        if self._scores is None:
            valid = self.valid & ~torch.isnan(self.score_matrix)
            idx = valid.nonzero()
            values = self.score_matrix[valid].tolist()
            self._scores = EdgeScores(
                self.graph, {self.name_at(tuple(ix)): v for ix, v in zip(idx.tolist(), values)}
            )
        return self._scores

    edge_scores = scores

    @property
    def nodes(self) -> list[str]:
        """Nodes touched by an edge of the circuit, in topological order."""
        keep: set[str] = set()
        edges = self.in_graph if self.positions is None else self.in_graph.any(-1)
        s, r = edges.nonzero(as_tuple=True)
        for i, j in zip(s.tolist(), r.tolist()):
            keep.add(self.graph.senders[i].name)
            keep.add(self.graph.receivers[j].node)
        return [n for n in self.graph.topological_order() if n in keep]

    def top_edges(self, n: int = 10, *, in_circuit: bool = True) -> list[tuple[str, float]]:
        """The ``n`` kept edges with the largest |score| (fewer when the circuit keeps fewer;
        :meth:`top_scored` ranks every scored edge)."""
        mask = self.in_graph if in_circuit else self.valid
        scores = torch.where(mask & ~torch.isnan(self.score_matrix), self.score_matrix.abs(), -1.0)
        flat = scores.flatten()
        k = min(n, int((flat >= 0).sum()))
        idx = flat.topk(k).indices
        shape = tuple(self.score_matrix.shape)
        out = []
        for i in idx.tolist():
            ix = tuple(int(x) for x in torch.unravel_index(torch.tensor(i), shape))
            out.append((self.name_at(ix), float(self.score_matrix.flatten()[i])))
        return out

    def top_scored(self, n: int = 10) -> list[tuple[str, float]]:
        """The ``n`` scored edges with the largest |score|, kept or not."""
        return self.top_edges(n, in_circuit=False)

    def to_networkx(self) -> nx.MultiDiGraph:
        """The circuit as a ``networkx.MultiDiGraph`` (nodes and edges in the circuit only;
        position-aware edges are keyed ``q@5``, with a ``column`` attribute)."""
        import networkx as nx

        if self.positions is not None:
            g = self.collapsed().to_networkx()
            g.remove_edges_from(list(g.edges(keys=True)))
            for ix in self.in_graph.nonzero().tolist():
                recv = self.graph.receivers[ix[1]]
                col = self.positions[ix[2]]
                g.add_edge(
                    self.graph.senders[ix[0]].name,
                    recv.node,
                    key=f"{recv.qkv or ''}@{col}",
                    name=self.name_at(tuple(ix)),
                    qkv=recv.qkv,
                    column=col,
                    score=float(self.score_matrix[tuple(ix)]),
                )
            return g

        g = nx.MultiDiGraph()
        for name in self.nodes:
            node = self.graph.nodes[name]
            g.add_node(name, kind=node.kind, layer=node.layer, head=node.head, label=node.label)
        s, r = self.in_graph.nonzero(as_tuple=True)
        for i, j in zip(s.tolist(), r.tolist()):
            recv = self.graph.receivers[j]
            g.add_edge(
                self.graph.senders[i].name,
                recv.node,
                key=recv.qkv or "",
                name=self.graph.edge_name(i, j),
                qkv=recv.qkv,
                score=float(self.score_matrix[i, j]),
            )
        return g

    def with_edges(self, in_graph: Tensor, **meta: Any) -> Circuit:
        """The same scores with another set of kept edges."""
        return Circuit(
            self.graph,
            self.score_matrix,
            in_graph,
            {**self.meta, **meta},
            self.node_scores,
            runs=self.runs,
            positions=self.positions,
        )

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        g = self.graph
        in_nodes = set(self.nodes)
        nodes: dict[str, Any] = {}
        for name in g.topological_order():
            entry: dict[str, Any] = {"in_graph": name in in_nodes}
            if self.node_scores is not None and name in self.node_scores:
                entry["score"] = self.node_scores[name]
            nodes[name] = entry
        edges: dict[str, Any] = {}
        valid = self.valid
        idx = valid.nonzero().tolist()
        scores = self.score_matrix[valid].tolist()
        flags = self.in_graph[valid].tolist()
        for ix, score, flag in zip(idx, scores, flags):
            edges[self.name_at(tuple(ix))] = {
                "score": None if math.isnan(score) else score,
                "in_graph": bool(flag),
            }
        cfg: dict[str, Any] = {
            "n_layers": g.cfg.n_layers,
            "n_heads": g.cfg.n_heads,
            "parallel_attn_mlp": g.cfg.parallel_attn_mlp,
            "d_model": g.cfg.d_model,
        }
        if self.positions is not None:
            cfg["positions"] = list(self.positions)
        return {"cfg": cfg, "nodes": nodes, "edges": edges, "meta": self.meta}

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the circuit as strict JSON (non-finite numbers as ``null``), atomically."""
        return atomic_write_text(path, dumps(self.to_dict(), indent=1))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "circuit") -> Circuit:
        """A circuit from its JSON form, validated before anything is allocated."""
        n_layers, n_heads, parallel = _check_cfg(data, source)
        edges = data["edges"]
        if not isinstance(edges, dict):
            raise InputError(f"{source}: 'edges' must be an object of edge name -> entry")
        graph = graph_from_shape(n_layers, n_heads, parallel)
        positions = _check_positions(data["cfg"], edges, source)
        shape: tuple[int, ...] = (graph.n_senders, graph.n_receivers)
        column_of: dict[str, int] = {}
        if positions is not None:
            shape = (*shape, len(positions))
            if graph.n_senders * graph.n_receivers * len(positions) > MAX_CELLS:
                raise InputError(
                    f"{source}: {len(positions)} columns make the score matrix larger than "
                    f"circuitfind holds ({MAX_CELLS:,} cells)"
                )
            column_of = {p: k for k, p in enumerate(positions)}
        scores = torch.full(shape, float("nan"))
        in_graph = torch.zeros(shape, dtype=torch.bool)
        for raw_name, entry in edges.items():
            edge_part, col = split_position_edge(raw_name)
            if (col is None) != (positions is None) or (col is not None and col not in column_of):
                raise InputError(
                    f"{source}: edge {raw_name!r}: "
                    + (
                        f"column {col!r} is not one of cfg.positions {list(positions)}"
                        if positions is not None and col is not None
                        else "a position-aware circuit names every edge with its column "
                        "(edge@column) and a position-free one none"
                    )
                )
            try:
                name = parse_edge(edge_part, graph.cfg)
            except InputError as exc:
                raise InputError(f"{source}: {exc}") from None
            if name not in graph.edges:
                raise InputError(f"{source}: edge {raw_name!r} is not an edge of this graph")
            e = graph.edges[name]
            at: tuple[int, ...] = (e.sender_index, e.receiver_index)
            if col is not None:
                at = (*at, column_of[col])
            if isinstance(entry, dict):
                score, flag = entry.get("score"), entry.get("in_graph", False)
            else:  # {name: score} or {name: bool}
                score, flag = (None, entry) if isinstance(entry, bool) else (entry, False)
            value = _score(score, f"{source}: edge {raw_name!r}")
            if value is not None:
                scores[at] = value
            if not isinstance(flag, bool) and flag not in (0, 1):
                raise InputError(f"{source}: edge {raw_name!r}: in_graph must be true or false")
            in_graph[at] = bool(flag)
        node_scores: dict[str, float] | None = None
        nodes = data.get("nodes") or {}
        if not isinstance(nodes, dict):
            raise InputError(f"{source}: 'nodes' must be an object of node name -> entry")
        for raw_name, entry in nodes.items():
            if isinstance(entry, dict) and entry.get("score") is not None:
                value = _score(entry["score"], f"{source}: node {raw_name!r}")
                try:
                    node = parse_node(raw_name, graph.cfg)
                except InputError as exc:
                    raise InputError(f"{source}: {exc}") from None
                if value is not None:
                    node_scores = node_scores or {}
                    node_scores[node] = value
        meta = data.get("meta") or {}
        if not isinstance(meta, dict):
            raise InputError(f"{source}: 'meta' must be an object")
        return cls(
            graph,
            scores,
            in_graph,
            dict(meta),
            node_scores,
            positions=None if positions is None else tuple(positions),
        )

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> Circuit:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"circuit file {str(path)!r} does not exist")
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")  # a byte-order mark is accepted
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise InputError(f"{path}: line {line} is not UTF-8 text; save it as UTF-8") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: not a circuit file (expected a JSON object)")
        return cls.from_dict(data, source=str(path))

    # ------------------------------------------------------------------ MIB
    def to_mib(self, out_dir: str | os.PathLike[str], **options: Any) -> Path:
        """Write the circuit for the MIB circuit-localization track (``circuitfind.mib``)."""
        from circuitfind.mib import to_mib

        return to_mib(self, out_dir, **options)

    @classmethod
    def from_mib(cls, path: str | os.PathLike[str]) -> Circuit:
        """A circuit from MIB files (``circuitfind.mib.from_mib``)."""
        from circuitfind.mib import from_mib

        return from_mib(path)

    def __repr__(self) -> str:
        method = self.meta.get("method", "?")
        total = self.n_edges_total
        where = "" if self.positions is None else f" over {len(self.positions)} columns"
        return (
            f"Circuit({self.n_edges} of {total} edges{where}, {len(self.nodes)} nodes, "
            f"method={method})"
        )


def _check_cfg(data: Any, source: str) -> tuple[int, int, bool]:
    """The model shape a circuit file records, within sane bounds (before any allocation)."""
    usage = "needs 'cfg' with n_layers and n_heads, and 'edges'"
    if not isinstance(data, dict) or not isinstance(data.get("cfg"), dict) or "edges" not in data:
        raise InputError(f"{source}: not a circuit file ({usage})")
    cfg = data["cfg"]
    out = []
    for key, high in (("n_layers", MAX_LAYERS), ("n_heads", MAX_HEADS)):
        value = cfg.get(key)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{source}: cfg.{key} must be an integer; got {value!r} ({usage})")
        if not 1 <= value <= high:
            raise InputError(f"{source}: cfg.{key} = {value} is outside [1, {high}]")
        out.append(value)
    n_layers, n_heads = out
    parallel = cfg.get("parallel_attn_mlp", False)
    if not isinstance(parallel, bool):
        raise InputError(f"{source}: cfg.parallel_attn_mlp must be true or false")
    senders = 1 + n_layers * (n_heads + 1)
    receivers = n_layers * (3 * n_heads + 1) + 1
    if senders * receivers > MAX_CELLS:
        raise InputError(
            f"{source}: a {n_layers} x {n_heads} model has {senders * receivers:,} sender x "
            f"receiver pairs, more than circuitfind holds ({MAX_CELLS:,})"
        )
    return n_layers, n_heads, parallel


def _check_positions(cfg: dict[str, Any], edges: dict[str, Any], source: str) -> list[str] | None:
    """The column names of a position-aware circuit file: ``cfg.positions`` when given, else
    the columns its edge names carry (``edge@column``, in first-seen order), else None."""
    given = cfg.get("positions")
    if given is not None:
        if not isinstance(given, list) or not given or len(given) > 100_000:
            raise InputError(f"{source}: cfg.positions must be a non-empty list of column names")
        names = [str(p) for p in given]
        if len(set(names)) != len(names):
            raise InputError(f"{source}: cfg.positions has repeated names")
        return names
    seen: dict[str, None] = {}
    for raw in edges:
        col = split_position_edge(str(raw))[1]
        if col is not None:
            seen.setdefault(col, None)
    if not seen:
        return None
    cols = list(seen)
    if all(c.isdigit() for c in cols):
        cols.sort(key=int)
    return cols


def _score(value: Any, where: str) -> float | None:
    """A score from a file: a number (NaN = unscored), or null; anything else is an error."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where}: score must be a number or null; got {value!r}")
    x = float(value)
    if math.isnan(x):
        return None
    if math.isinf(x):
        raise InputError(f"{where}: score is infinite; scores must be finite numbers or null")
    return x
