"""circuitfind: automated circuit discovery for transformer language models."""

from circuitfind.circuit import Circuit
from circuitfind.errors import CircuitfindError, InputError, ModelLoadError, UnsupportedModelError
from circuitfind.graph import Edge, Graph, Node, parse_edge, parse_node
from circuitfind.inspect import dla, logit_lens
from circuitfind.loading import load
from circuitfind.model import ForwardCache, Model, ModelConfig, cache_bytes
from circuitfind.version import __version__

__all__ = [
    "Circuit",
    "CircuitfindError",
    "Edge",
    "ForwardCache",
    "Graph",
    "InputError",
    "Model",
    "ModelConfig",
    "ModelLoadError",
    "Node",
    "UnsupportedModelError",
    "__version__",
    "cache_bytes",
    "dla",
    "load",
    "logit_lens",
    "parse_edge",
    "parse_node",
]
