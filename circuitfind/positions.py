"""Position-aware edges: which column (position or named span) each token of each prompt is in.

In the residual-stream graph a sender's output at position p is added to the stream at p, and a
receiver at p reads it there (attention moves information between positions *inside* a head,
through its keys and values at earlier positions). So a position-aware edge is one term of a
receiver's input at one position: ``(sender -> receiver, p)``, and a graph with E edges over
prompts of T tokens has E x T position edges. This is auto-circuit's convention
(``graph_edges(..., seq_len=T)`` makes one ``Edge(src, dest, seq_idx)`` per edge and position:
GPT-2 small at 16 tokens has 32,491 x 16 = 519,856); circuitfind's graph counts the same 32,491
edges for GPT-2 small (q, k and v receivers apart, as auto-circuit's ``separate_qkv``), so both
conventions give 519,856.

Spans group positions: the edge ``(sender -> receiver, span)`` is the set of terms at every
position of the span, for each prompt its own positions (a span's positions may differ from
prompt to prompt: IOI's S2 is where each prompt's repeated name is). Positions outside every
named span form one more span, ``other`` (so turning every column off is the fully ablated
run); padding goes to ``other`` too, or to the first span when every real token is named
(padding never reaches a readout, so its column does not matter).

Names: an edge at a column is ``edge@column`` (``a0.h3->a1.h2<q>@5``, ``m1->logits@END``) in
circuit files, whose ``cfg.positions`` lists the columns. MIB's and EAP-IG's circuit files are
position-free, and auto-circuit keeps the position as a separate field of its ``Edge``
(``seq_idx``) with no string form, so there is no field convention to follow; the suffix keeps
the EAP-IG / MIB edge name intact before the ``@``.

A :class:`PositionLayout` is the column of every (prompt, position) of a task: ``[n, T]``.
Masks and scores with positions are ``[S, R, P]`` (P columns), in the layout's column order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from circuitfind.errors import InputError

__all__ = [
    "OTHER",
    "PositionLayout",
    "attach_layout",
    "layout_for",
    "position_edge_name",
    "split_position_edge",
]

OTHER = "other"
_AT = re.compile(r"^(?P<edge>.+)@(?P<col>[^@]+)$")


@dataclass(frozen=True, eq=False)
class PositionLayout:
    """The column (position or span) of every token of a task's prompts.

    Attributes:
        names: one name per column: ``"0", "1", ...`` for positions, span names for spans.
        columns: [n, T] long: the column of each prompt's token at each position.
        kind: ``"positions"`` (one column a position) or ``"spans"``.
    """

    names: tuple[str, ...]
    columns: Tensor  # [n, T]
    kind: str = "positions"

    @property
    def n_columns(self) -> int:
        return len(self.names)

    def batch(self, idx: Tensor, length: int, device: torch.device | None = None) -> Tensor:
        """The columns of the prompts ``idx`` over their first ``length`` positions: [b, p]."""
        cols = self.columns[idx.cpu(), :length]
        return cols if device is None else cols.to(device)

    def spec(self) -> bool | list[str]:
        """What ``positions=`` rebuilds this layout from: True, or the span names given."""
        if self.kind == "positions":
            return True
        return [n for n in self.names if n != OTHER]

    def to_meta(self) -> dict[str, Any]:
        """The layout as circuit metadata."""
        return {"kind": self.kind, "names": list(self.names)}


def layout_for(task: Any, positions: bool | str | Sequence[str] | None) -> PositionLayout | None:
    """The layout that ``positions=`` asks for on ``task``: None (position-free), True (one
    column per position), or span names (``["S1", "IO", "S2", "END"]`` or ``"S1,IO,S2,END"``)
    that the task records in ``task.spans``."""
    if positions is None or positions is False:
        return None
    n, T = task.clean.shape
    if positions is True or (isinstance(positions, str) and positions.lower() in ("all", "true")):
        cols = torch.arange(T).expand(n, T).clone()
        return PositionLayout(tuple(str(i) for i in range(T)), cols, "positions")
    names = [s.strip() for s in positions.split(",")] if isinstance(positions, str) else positions
    names = [str(s) for s in names if str(s)]
    if not names:
        raise InputError("positions: give True (every position) or a list of span names")
    spans = getattr(task, "spans", None) or {}
    missing = [s for s in names if s not in spans]
    if missing:
        known = ", ".join(spans) or "none"
        raise InputError(
            f"task {task.name!r} records no span {', '.join(map(repr, missing))} (its spans: "
            f"{known}); use positions=True for one edge per position"
        )
    if len(set(names)) != len(names) or OTHER in names:
        raise InputError(f"span names must be distinct and not {OTHER!r}; got {names}")
    cols = torch.full((n, T), -1, dtype=torch.long)
    for k, name in enumerate(names):
        member = span_mask(spans[name], n, T)
        clash = member & (cols >= 0)
        if bool(clash.any()):
            i, p = (int(x) for x in clash.nonzero()[0])
            raise InputError(
                f"spans {names[int(cols[i, p])]!r} and {name!r} overlap (prompt {i}, position "
                f"{p}); spans must be disjoint"
            )
        cols[member] = k
    real = (
        task.attention_mask.bool()
        if task.attention_mask is not None
        else torch.ones(n, T, dtype=torch.bool)
    )
    if bool(((cols < 0) & real).any()):
        names = [*names, OTHER]
        cols[cols < 0] = len(names) - 1
    else:
        cols[cols < 0] = 0  # padding only: it never reaches a readout
    return PositionLayout(tuple(names), cols, "spans")


def span_mask(span: Tensor, n: int, T: int) -> Tensor:
    """[n, T] bool: the positions of a span given as [n] positions or [n, 2] (start, stop)."""
    span = torch.as_tensor(span).long()
    pos = torch.arange(T)[None, :]
    if span.shape == (n,):
        return pos == span[:, None]
    if span.shape == (n, 2):
        return (pos >= span[:, :1]) & (pos < span[:, 1:])
    raise InputError(
        f"a span must be [n] positions or [n, 2] (start, stop); got {tuple(span.shape)}"
    )


def position_edge_name(edge: str, column: str) -> str:
    """``a0.h3->a1.h2<q>`` at column ``5`` (or span ``S2``): ``a0.h3->a1.h2<q>@5``."""
    return f"{edge}@{column}"


def split_position_edge(name: str) -> tuple[str, str | None]:
    """(edge name, column) of ``a0.h3->a1.h2<q>@5``; column None for a position-free name."""
    m = _AT.match(name)
    if m is None:
        return name, None
    return m.group("edge"), m.group("col")


def attach_layout(runs: Any, names: Sequence[str], meta: dict[str, Any] | None = None) -> None:
    """Give prepared runs the layout of a position-aware circuit with columns ``names``,
    rebuilt from the runs' task (``meta["positions"]["spec"]`` when recorded, else from the
    names: all digits = one column a position, otherwise spans); an error when the task's
    columns differ (prompts of another length, spans the task does not record)."""
    names = tuple(names)
    current = getattr(runs, "layout", None)
    if current is not None and current.names == names:
        return
    spec: Any = ((meta or {}).get("positions") or {}).get("spec")
    if spec is None:
        spec = True if all(n.isdigit() for n in names) else [n for n in names if n != OTHER]
    layout = layout_for(runs.task, spec)
    if layout is None or layout.names != names:
        got = None if layout is None else list(layout.names)
        raise InputError(
            f"the circuit's position columns {list(names)} are not this task's ({got}): a "
            "position-aware circuit is evaluated on prompts of its own length and spans"
        )
    runs.layout = layout
