"""Feature circuits: transcoders, attribution graphs, interventions, dataset-level circuits."""

from circuitfind.features.graph import AttributionGraph, GraphNode, attribution_graph
from circuitfind.features.training import replacement_metrics, train_transcoders
from circuitfind.features.transcoder import Transcoder, TranscoderConfig, TranscoderSet

__all__ = [
    "AttributionGraph",
    "GraphNode",
    "Transcoder",
    "TranscoderConfig",
    "TranscoderSet",
    "attribution_graph",
    "replacement_metrics",
    "train_transcoders",
]
