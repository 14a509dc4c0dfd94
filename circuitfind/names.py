"""Node and edge names: the field's convention (EAP-IG / MIB), and every common spelling read.

The bottom of the package: it imports nothing but the errors, so the model, the graph and the
circuit files can all read names without importing each other.
"""

from __future__ import annotations

import re
from typing import Protocol

from circuitfind.errors import InputError

__all__ = ["parse_edge", "parse_node"]


class _Shape(Protocol):
    """What the range check needs of a model config."""

    @property
    def n_layers(self) -> int: ...

    @property
    def n_heads(self) -> int: ...


_HEAD_PATTERNS = [
    re.compile(r"^(?:a|l|layer|attn)?(\d+)[.:,_]?h(?:ead)?(\d+)$"),  # a9.h6, L9H6, layer9head6
    re.compile(r"^(?:a|l|layer)?(\d+)[.:,_/](\d+)$"),  # 9.6, A9.6, L9.6
]
_MLP_PATTERNS = [
    re.compile(r"^(?:m|mlp)[._]?(\d+)$"),  # m9, MLP9, mlp.9
    re.compile(r"^(?:l|layer)?(\d+)[._]?(?:m|mlp)$"),  # L9MLP, 9.mlp
]
_INPUT_NAMES = {"input", "embed", "embedding", "embeddings", "emb"}
_LOGITS_NAMES = {"logits", "output", "unembed"}


def parse_node(spelling: str, cfg: _Shape | None = None) -> str:
    """The canonical name of a node from any common spelling.

    Heads: ``a9.h6``, ``L9H6``, ``9.6``, ``A9.6``, ``l9.h6``; MLPs: ``m9``, ``MLP9``, ``L9MLP``;
    ``input`` (``embed``) and ``logits``. With ``cfg``, layer and head are range-checked.
    """
    s = re.sub(r"\s+", "", str(spelling)).lower()
    if s in _INPUT_NAMES:
        return "input"
    if s in _LOGITS_NAMES:
        return "logits"
    for pattern in _HEAD_PATTERNS:
        m = pattern.match(s)
        if m:
            layer, head = int(m.group(1)), int(m.group(2))
            _check_range(spelling, cfg, layer, head)
            return f"a{layer}.h{head}"
    for pattern in _MLP_PATTERNS:
        m = pattern.match(s)
        if m:
            layer = int(m.group(1))
            _check_range(spelling, cfg, layer, None)
            return f"m{layer}"
    raise InputError(
        f"cannot read {spelling!r} as a node name; write a head as a9.h6 (or L9H6, 9.6, A9.6), "
        "an MLP as m9, or input / logits"
    )


def _check_range(spelling: str, cfg: _Shape | None, layer: int, head: int | None) -> None:
    if cfg is None:
        return
    if layer >= cfg.n_layers:
        raise InputError(
            f"{spelling!r} names layer {layer}, but the model has layers 0..{cfg.n_layers - 1}"
        )
    if head is not None and head >= cfg.n_heads:
        raise InputError(
            f"{spelling!r} names head {head}, but the model has heads 0..{cfg.n_heads - 1}"
        )


_EDGE_RE = re.compile(r"^(.+?)\s*->\s*(.+?)\s*(?:<([qkvQKV])>|\[([qkvQKV])\]|\.([qkvQKV]))?$")


def parse_edge(spelling: str, cfg: _Shape | None = None) -> str:
    """The canonical name of an edge: ``a0.h3->a1.h2<k>``, from any spelling of its nodes."""
    m = _EDGE_RE.match(str(spelling).strip())
    if not m:
        raise InputError(
            f"cannot read {spelling!r} as an edge; write sender->receiver, e.g. a0.h3->a1.h2<k>"
        )
    sender = parse_node(m.group(1), cfg)
    receiver = parse_node(m.group(2), cfg)
    qkv = next((g for g in m.groups()[2:] if g), None)
    if receiver.startswith("a"):
        if qkv is None:
            raise InputError(f"edge {spelling!r} ends at a head: say which input, <q>, <k> or <v>")
        return f"{sender}->{receiver}<{qkv.lower()}>"
    if qkv is not None:
        raise InputError(f"edge {spelling!r}: only attention heads have <q>/<k>/<v> inputs")
    return f"{sender}->{receiver}"
