"""Prepared runs over a resampled prompt set, and per-prompt scores, without new passes.

A bootstrap resample of a task's prompts (drawn with replacement) reuses what
:class:`circuitfind.runs.PreparedRuns` already made: :class:`PromptRuns` is a view whose batches
are rows of the parent's batches (clean cache, ablated values and clean logits sliced, never
recomputed), whose task is the parent task's sub-task of those prompts, and whose masked-run
metrics are the parent's remembered per-prompt metrics, reindexed. Any method function runs
on it unchanged (a real re-score of the resampled set); :func:`circuitfind.evaluate` and
:func:`circuitfind.prune` accept it as their runs.

The ablated values stay the parent's: with ``mean`` ablation the means are those of the full
prompt set (only the prompts being scored are resampled).

Every built-in method except ACDC scores an edge by a mean over prompts of a per-prompt value
(exact patching and node ablation: metric(ablated) - metric(clean) per prompt; EAP and EAP-IG:
(ablated - clean) . gradient per prompt, prompts being independent in a forward pass). For those
(:data:`PROMPT_ADDITIVE`), :func:`per_prompt_scores` keeps one score matrix per prompt, and the
score of any resample is the mean of its prompts' matrices: a reindexing, not a re-score (a
test checks it equals re-scoring the resampled set).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitfind.errors import InputError
from circuitfind.graph import Graph
from circuitfind.methods.table import MethodSpec, method_options, method_spec
from circuitfind.model import ForwardCache
from circuitfind.patching import Batch
from circuitfind.runs import PreparedBatch, PreparedRuns
from circuitfind.scores import edges_from_nodes
from circuitfind.tasks.metrics import Metric

__all__ = [
    "PROMPT_ADDITIVE",
    "PerPromptScores",
    "PromptRuns",
    "per_prompt_scores",
    "prompt_additive",
    "scoring_function",
]

logger = logging.getLogger(__name__)

PROMPT_ADDITIVE: frozenset[str] = frozenset(
    {"exact", "eap", "eap-ig-inputs", "eap-ig-activations", "node"}
)
"""Methods whose score is a mean over prompts of a per-prompt score (module docstring)."""

_BATCHED = ("heads", "mlps", "resid_pre", "resid_mid", "z", "patterns", "attn_pre", "attn_post")


def prompt_additive(method: str | MethodSpec) -> bool:
    """Whether a method's scores are means of per-prompt scores (resampling is reindexing)."""
    spec = method_spec(method)
    return spec.name in PROMPT_ADDITIVE and not spec.prunes


def _slice_cache(cache: ForwardCache, rows: Tensor) -> ForwardCache:
    """The cache of the prompts ``rows`` of a batch (every [batch, ...] tensor indexed)."""
    out = ForwardCache(cache.cfg, cache.input[rows])
    for name in _BATCHED:
        setattr(out, name, [t[rows] for t in getattr(cache, name)])
    out.attn_bias = list(cache.attn_bias)  # constants, no batch axis
    out.resid_final = None if cache.resid_final is None else cache.resid_final[rows]
    return out


def _slice_prep(prep: PreparedBatch, rows: Tensor, idx: Tensor) -> PreparedBatch:
    """Prompts ``rows`` of a prepared batch, renumbered ``idx`` (their places in the view)."""
    b = prep.batch
    dev = b.clean.device
    r = rows.to(dev)
    batch = Batch(
        idx=idx,
        clean=b.clean[r],
        corrupted=b.corrupted[r],
        attention_mask=None if b.attention_mask is None else b.attention_mask[r],
        readout=b.readout[r],
    )
    out = PreparedBatch(prep.model, batch)
    abl = prep.ablated
    out.ablated = abl[:, r.to(abl.device)] if abl.shape[1] == b.size else abl
    if prep._cache is not None:
        out._cache = _slice_cache(prep._cache, r)
    if prep._logits is not None:
        out._logits = prep._logits[r.to(prep._logits.device)]
    if prep._diff is not None:
        out._diff = prep._diff[:, r.to(prep._diff.device)]
    return out


class PromptRuns(PreparedRuns):
    """The prepared runs of a parent's prompts ``prompts`` (indices into its task, repeats
    allowed), made from the parent's without a forward pass (module docstring).

    ``prompts`` are kept in sorted order (a resample's order does not matter), so that the
    view's prompt ``j`` is ``parent.task[self.prompts[j]]``.
    """

    def __init__(self, parent: PreparedRuns, prompts: Sequence[int] | Tensor) -> None:
        # no super().__init__: nothing is run; every attribute a method reads is set here
        idx = torch.as_tensor(prompts, dtype=torch.long).flatten().sort().values
        n = parent.n_prompts
        if idx.numel() == 0:
            raise InputError("a resample needs at least one prompt")
        if int(idx.min()) < 0 or int(idx.max()) >= n:
            raise InputError(f"prompt indices must lie in [0, {n}); got {idx.tolist()[:8]}...")
        self.parent = parent
        self.prompts = idx
        self.model, self.graph = parent.model, parent.graph
        self.task = parent.task[idx]
        self.kind, self.ablation = parent.kind, parent.ablation
        self.batch_size = parent.batch_size
        self.progress = False
        self.streaming = False  # a view of the parent's values, which it keeps or remakes
        self.checkpoint_dir = None
        layout = getattr(parent, "layout", None)  # position-aware edges: the view's columns
        self.layout = None if layout is None else replace(layout, columns=layout.columns[idx])
        self._memo: dict[tuple[str | None, bytes], Tensor] = {}
        self._batches: list[PreparedBatch] | None = None

    @property
    def batches(self) -> list[PreparedBatch]:  # type: ignore[override]
        """The parent's batches restricted to (and repeating) this view's prompts."""
        if self._batches is None:
            out, start, place = [], 0, 0
            for prep in self.parent.batches:
                stop = start + prep.batch.size
                rows = self.prompts[(self.prompts >= start) & (self.prompts < stop)] - start
                if rows.numel():
                    idx = torch.arange(place, place + rows.numel())
                    out.append(_slice_prep(prep, rows, idx))
                    place += rows.numel()
                start = stop
            self._batches = out
        return self._batches

    def __iter__(self) -> Iterator[PreparedBatch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def metric_of(self, mask: Tensor, metric: str | Metric | None = None) -> Tensor:
        """Per-prompt metrics [len(prompts)] under ``mask``: the parent's (remembered there,
        so every resample shares each circuit's masked runs), reindexed."""
        values = self.parent.metric_of(mask, metric)
        return values[self.prompts.to(values.device)]


@dataclass
class PerPromptScores:
    """One score matrix per prompt: ``edges`` [n, S, R] ([n, S, R, P] with positions; NaN
    outside ``graph.valid``) and,
    for node-level methods, ``nodes`` [n, len(node_names)] (their edges then follow from the
    mean node scores, :func:`circuitfind.scores.edges_from_nodes`, which is not linear)."""

    edges: Tensor
    nodes: Tensor | None = None
    node_names: list[str] | None = None
    graph: Graph | None = None

    def mean(self, prompts: Tensor | None = None) -> tuple[Tensor, dict[str, float] | None]:
        """(edge scores [S, R], node scores) of the prompts ``prompts`` (repeats count)."""
        pick = slice(None) if prompts is None else prompts
        edges = self.edges[pick].double().mean(0).float()
        nodes = None
        if self.nodes is not None and self.node_names is not None:
            values = self.nodes[pick].double().mean(0).tolist()
            nodes = dict(zip(self.node_names, values))
            if self.graph is not None:
                edges = edges_from_nodes(self.graph, nodes)
        return edges, nodes


def scoring_function(spec: MethodSpec, runs: PreparedRuns) -> Any:
    """The function that scores ``runs`` with ``spec``'s method: its position-aware form when
    the runs carry a position layout (:data:`circuitfind.methods.positional.POSITIONAL_FORMS`)."""
    fn = spec.function()
    if getattr(runs, "layout", None) is None:
        return fn
    from circuitfind.methods.positional import positional_function

    return positional_function(spec.name, fn)


def per_prompt_scores(
    runs: PreparedRuns, method: str | MethodSpec, options: dict[str, Any] | None = None
) -> PerPromptScores:
    """Every prompt's own scores for a :data:`PROMPT_ADDITIVE` method: the method run on a
    one-prompt view of ``runs`` per prompt (the parent's caches sliced; no clean or ablated
    pass is repeated). Costs about one scoring run at batch size 1."""
    spec = method_spec(method)
    if not prompt_additive(spec):
        raise InputError(
            f"method {spec.name!r} is not a mean of per-prompt scores; re-score each resample "
            "instead (circuitfind.stability does this for it)"
        )
    opts = method_options(spec, options)
    fn = scoring_function(spec, runs)
    edges, nodes, names = [], [], None
    for i in tqdm(range(runs.n_prompts), desc="per-prompt scores", disable=not runs.progress):
        result = fn(PromptRuns(runs, [i]), **opts)
        edges.append(result.edges.float().cpu())
        if result.nodes is not None:
            names = names or list(result.nodes)
            nodes.append(torch.tensor([result.nodes[k] for k in names], dtype=torch.float64))
    return PerPromptScores(
        torch.stack(edges),
        torch.stack(nodes) if nodes else None,
        names if nodes else None,
        runs.graph,
    )
