"""Feature circuits: transcoders, attribution graphs, interventions, dataset-level circuits.

``train_transcoders`` (training.py) trains per-site transcoders on a model's own data;
``attribution_graph`` (graph.py) builds a prompt's graph over the local replacement model
(frozen.py), pruned as circuit-tracer prunes (prune.py); ``attention_drivers`` (qk.py) splits a
head's attention score over pairs of graph nodes; ``intervention_check`` (intervene.py) compares
the graph's predicted effects with measured ones; ``feature_circuit`` (dataset.py) is Marks et
al.'s dataset-level circuit, with edges, drawn by ``draw_feature_circuit`` (draw.py);
``to_neuronpedia`` (export.py) writes Neuronpedia's graph JSON;
``write_feature_explorer`` (explorer.py) draws a graph as one offline HTML page.
Names load lazily, so ``import circuitfind.features`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "AttributionGraph": "graph",
    "GraphNode": "graph",
    "attribution_graph": "graph",
    "Transcoder": "transcoder",
    "TranscoderConfig": "transcoder",
    "TranscoderSet": "transcoder",
    "train_transcoders": "training",
    "replacement_metrics": "training",
    "attention_drivers": "qk",
    "intervention_check": "intervene",
    "feature_circuit": "dataset",
    "FeatureCircuit": "dataset",
    "draw_feature_circuit": "draw",
    "feature_circuit_dot": "draw",
    "to_neuronpedia": "export",
    "write_neuronpedia": "export",
    "top_examples": "examples",
    "build_feature_payload": "explorer",
    "feature_explorer_html": "explorer",
    "write_feature_explorer": "explorer",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        module = importlib.import_module(f"circuitfind.features.{_NAMES[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'circuitfind.features' has no attribute {name!r}")
