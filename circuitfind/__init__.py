"""circuitfind: automated circuit discovery for transformer language models."""

from circuitfind.circuit import Circuit
from circuitfind.discovery import discover
from circuitfind.errors import CircuitfindError, InputError, ModelLoadError, UnsupportedModelError
from circuitfind.evaluation import Evaluation, evaluate
from circuitfind.graph import Edge, Graph, Node, parse_edge, parse_node
from circuitfind.inspect import dla, logit_lens
from circuitfind.loading import load
from circuitfind.methods import METHODS
from circuitfind.model import ForwardCache, Model, ModelConfig, cache_bytes
from circuitfind.patching import ABLATIONS
from circuitfind.render import render
from circuitfind.roles import Role, detect_roles
from circuitfind.runs import PreparedRuns
from circuitfind.scoring import score
from circuitfind.search import prune
from circuitfind.tasks import Task, get_task
from circuitfind.version import __version__

__all__ = [
    "ABLATIONS",
    "METHODS",
    "Circuit",
    "CircuitfindError",
    "Edge",
    "Evaluation",
    "ForwardCache",
    "Graph",
    "InputError",
    "Model",
    "ModelConfig",
    "ModelLoadError",
    "Node",
    "PreparedRuns",
    "Role",
    "Task",
    "UnsupportedModelError",
    "__version__",
    "cache_bytes",
    "detect_roles",
    "discover",
    "dla",
    "evaluate",
    "get_task",
    "load",
    "logit_lens",
    "parse_edge",
    "parse_node",
    "prune",
    "render",
    "score",
]
