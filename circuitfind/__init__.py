"""circuitfind: automated circuit discovery for transformer language models.

The names below are imported on first use (PEP 562), so ``import circuitfind`` (and the
``circuitfind --help`` that imports it) loads neither torch nor transformers until a name that
needs them is asked for.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from circuitfind.version import __version__

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from circuitfind.certify import certify
    from circuitfind.circuit import Circuit
    from circuitfind.discovery import discover
    from circuitfind.errors import (
        CircuitfindError,
        InputError,
        ModelLoadError,
        UnsupportedModelError,
    )
    from circuitfind.evaluation import Evaluation, evaluate
    from circuitfind.graph import Edge, Graph, Node
    from circuitfind.inspect import dla, logit_lens
    from circuitfind.loading import load
    from circuitfind.methods.table import METHODS
    from circuitfind.model import ForwardCache, Model, ModelConfig, cache_bytes
    from circuitfind.names import parse_edge, parse_node
    from circuitfind.patching import ABLATIONS
    from circuitfind.render import render
    from circuitfind.roles import Role, detect_roles
    from circuitfind.runs import PreparedRuns
    from circuitfind.scoring import score
    from circuitfind.search import prune
    from circuitfind.tasks import Task, get_task

# public name -> the module that defines it
_LAZY: dict[str, str] = {
    "Circuit": "circuitfind.circuit",
    "METHODS": "circuitfind.methods.table",
    "discover": "circuitfind.discovery",
    "certify": "circuitfind.certify",
    "score": "circuitfind.scoring",
    "prune": "circuitfind.search",
    "PreparedRuns": "circuitfind.runs",
    "CircuitfindError": "circuitfind.errors",
    "InputError": "circuitfind.errors",
    "ModelLoadError": "circuitfind.errors",
    "UnsupportedModelError": "circuitfind.errors",
    "Evaluation": "circuitfind.evaluation",
    "evaluate": "circuitfind.evaluation",
    "Edge": "circuitfind.graph",
    "Graph": "circuitfind.graph",
    "Node": "circuitfind.graph",
    "parse_edge": "circuitfind.names",
    "parse_node": "circuitfind.names",
    "dla": "circuitfind.inspect",
    "logit_lens": "circuitfind.inspect",
    "load": "circuitfind.loading",
    "ForwardCache": "circuitfind.model",
    "Model": "circuitfind.model",
    "ModelConfig": "circuitfind.model",
    "cache_bytes": "circuitfind.model",
    "ABLATIONS": "circuitfind.patching",
    "render": "circuitfind.render",
    "Role": "circuitfind.roles",
    "detect_roles": "circuitfind.roles",
    "Task": "circuitfind.tasks",
    "get_task": "circuitfind.tasks",
    "attribution_graph": "circuitfind.features",
    "train_transcoders": "circuitfind.features",
}

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
    "attribution_graph",
    "cache_bytes",
    "certify",
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
    "train_transcoders",
]


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first use and cache the value here."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'circuitfind' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function (and tests may monkeypatch it)
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """The package's module type: importing a submodule named like one of the package's
    functions (``circuitfind.render``) must not replace the function (the import system sets
    the parent's attribute to the submodule)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in _LAZY and _LAZY[name].endswith(name):
            return  # the function is looked up by __getattr__ on first use
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
