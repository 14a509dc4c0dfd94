"""circuitfind: automated circuit discovery for transformer language models."""

from circuitfind.circuit import Circuit
from circuitfind.errors import CircuitfindError, InputError, ModelLoadError, UnsupportedModelError
from circuitfind.graph import Edge, Graph, Node, parse_edge, parse_node
from circuitfind.loading import load
from circuitfind.model import ForwardCache, Model, ModelConfig, cache_bytes
from circuitfind.render import render
from circuitfind.roles import Role, detect_roles
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
    "Role",
    "UnsupportedModelError",
    "__version__",
    "cache_bytes",
    "detect_roles",
    "load",
    "parse_edge",
    "parse_node",
    "render",
]
