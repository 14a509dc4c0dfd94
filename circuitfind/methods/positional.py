"""Exact patching of position-aware edges: one (edge, column) term ablated at a time.

score(s -> r @ c) = metric(only that term ablated) - metric(clean), averaged over prompts: the
receiver r reads the ablated value of sender s at the tokens of column c (a position, or a span's
positions in each prompt) and the clean one everywhere else. Runs are masked runs
(:func:`circuitfind.patching_positions.masked_forward_positional`), ``variants`` masks stacked
on the batch axis per pass, each starting at the receiver's layer from the clean run's cached
senders (nothing upstream of the receiver changes). A column with no token in a batch changes
nothing there and is not run. Cost: one partial forward per (edge, column) present.

``circuitfind.methods.exact`` (position-free) is unchanged; ``score(..., method="exact",
positions=...)`` comes here.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import Tensor

from circuitfind.errors import InputError
from circuitfind.patching_positions import masked_forward_positional
from circuitfind.progress import bar as progress_bar
from circuitfind.runs import PreparedRuns
from circuitfind.scores import Scores

__all__ = [
    "POSITIONAL_FORMS",
    "exact_positional_scores",
    "positional_function",
    "score_exact_positional",
]

POSITIONAL_FORMS: dict[str, str | None] = {
    "exact": "circuitfind.methods.positional:score_exact_positional",
    "eap": None,  # None: the method's own function reads ``runs.layout``
    "eap-ig-inputs": None,
    "eap-ig-activations": None,
    "edge-pruning": None,
    "ugs": None,
}
"""Methods with a position-aware form: method name -> the ``"module:function"`` that scores
(edge, column) terms, or None when the method's own function does (it reads ``runs.layout``
and returns [S, R, P] scores). A method outside this table refuses ``positions=``. The learned
masks (edge-pruning, ugs) go positional by training a [S, R, P] mask through
``masked_forward(..., columns=)`` (:mod:`circuitfind.methods.masks`)."""


def positional_function(name: str, default: Any) -> Any:
    """The function that scores ``name``'s position-aware edges; an error for a method that
    has no position-aware form."""
    if name not in POSITIONAL_FORMS:
        raise InputError(
            f"method {name!r} has no position-aware form; positions= works with "
            f"{', '.join(POSITIONAL_FORMS)}"
        )
    target = POSITIONAL_FORMS[name]
    if target is None:
        return default
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _start_layer(receiver_layer: int | None, n_layers: int) -> int:
    return n_layers if receiver_layer is None else receiver_layer


def exact_positional_scores(runs: PreparedRuns, *, variants: int = 16) -> Tensor:
    """[S, R, P] exact scores of every (edge, column) of ``runs.layout`` (NaN off the graph)."""
    layout = runs.layout
    if layout is None:
        raise InputError("exact positional patching needs prepared runs with a position layout")
    if not isinstance(variants, int) or variants < 1:
        raise InputError(f"variants must be a positive integer; got {variants!r}")
    model, graph, task = runs.model, runs.graph, runs.task
    S, R, P = graph.n_senders, graph.n_receivers, layout.n_columns
    H, L = model.cfg.n_heads, model.cfg.n_layers
    totals = torch.zeros(S, R, P, dtype=torch.float64)
    terms = [
        (s, r.index, c)
        for r in graph.receivers
        for s in range(int(graph.n_upstream[r.index]))
        for c in range(P)
    ]
    bar = progress_bar(
        total=len(runs) * len(terms),
        desc="exact patching @ positions",
        disable=not runs.progress,
        unit="edge",
    )
    with torch.no_grad():
        for prep in runs:
            batch = prep.batch
            columns = layout.batch(batch.idx, batch.clean.shape[1], model.device)
            present = set(torch.unique(columns).tolist())
            clean = prep.metric(task, prep.clean_logits).double()  # [b]
            by_layer: dict[int, list[tuple[int, int, int]]] = {}
            for s, r, c in terms:
                if c in present:
                    layer = _start_layer(graph.receivers[r].layer, L)
                    by_layer.setdefault(layer, []).append((s, r, c))
            for layer, todo in sorted(by_layer.items()):
                prefix = list(prep.clean_diff[: 1 + layer * (H + 1)].unbind(0))
                for k in range(0, len(todo), variants):
                    chunk = todo[k : k + variants]
                    mask = torch.ones(len(chunk), S, R, P, device=model.device)
                    for v, (s, r, c) in enumerate(chunk):
                        mask[v, s, r, c] = 0.0
                    logits = masked_forward_positional(
                        model,
                        graph,
                        batch.clean,
                        batch.attention_mask,
                        prep.ablated,
                        mask,
                        columns,
                        readout=batch.readout,
                        prefix=prefix,
                        start_layer=layer,
                    )
                    m = prep.metric(task, logits, variants=len(chunk)).double()
                    delta = (m.view(len(chunk), -1) - clean[None]).sum(1).cpu()
                    for v, (s, r, c) in enumerate(chunk):
                        totals[s, r, c] += delta[v]
                    bar.update(len(chunk))
            bar.update(len(terms) - sum(len(t) for t in by_layer.values()))
    bar.close()
    scores = (totals / len(task)).float()
    scores[~graph.valid] = float("nan")
    return scores


def score_exact_positional(runs: PreparedRuns, *, variants: int = 16) -> Scores:
    """Exact patching of every (edge, column) term (see the module docstring)."""
    return Scores(exact_positional_scores(runs, variants=variants))
