"""``circuitfind serve DIR``: the explorer page on localhost, plus live re-evaluation.

The server (the standard library's ``http.server``, bound to 127.0.0.1 by default) serves the
same page as ``DIR/explorer.html`` with its ablate / restore buttons on, and one JSON endpoint:

``POST /api/evaluate`` with ``{"point": i, "ablate_nodes": [...], "ablate_edges": [...]}``
returns the faithfulness (with its bootstrap standard error and 95% interval, the effect and
the reliability flag) of the circuit at slider point ``i`` with those nodes (every edge into
or out of them) and edges removed, measured by :func:`circuitfind.evaluate` over prepared runs
made once at start-up (a circuit measured before is answered from memory). A bad name is a 400
answer ``{"error": "..."}`` naming it. ``GET /api/points`` lists the slider's points.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import TYPE_CHECKING, Any

from circuitfind.errors import CircuitfindError, InputError
from circuitfind.explorer.data import build_payload, slider_points
from circuitfind.explorer.page import _title, explorer_html

if TYPE_CHECKING:
    from circuitfind.circuit import Circuit

__all__ = ["ExplorerSession", "make_server"]

logger = logging.getLogger(__name__)


class ExplorerSession:
    """A circuit, its model and task, and the prepared runs that re-evaluate it."""

    def __init__(
        self,
        circuit: Circuit,
        model: Any,
        task: Any,
        *,
        roles: Any = None,
        frequencies: dict[str, float] | None = None,
        batch_size: int | None = None,
    ) -> None:
        from circuitfind.scoring import prepare

        self.circuit, self.model, self.task = circuit, model, task
        self.points = slider_points(circuit)
        ablation = circuit.meta.get("ablation", "resample")
        size = batch_size or int(circuit.meta.get("batch_size") or 32)
        self.runs = prepare(model, task, ablation, batch_size=size)
        payload = build_payload(
            circuit, roles=roles, model=model, task=task, frequencies=frequencies, serve=True
        )
        self.page = explorer_html(payload, _title(circuit)).encode("utf-8")
        self.lock = threading.Lock()

    def evaluate(
        self,
        point: int,
        ablate_nodes: Sequence[str] = (),
        ablate_edges: Sequence[str] = (),
    ) -> dict[str, Any]:
        """The circuit at slider point ``point`` with ``ablate_nodes`` and ``ablate_edges``
        removed, measured (module docstring)."""
        from circuitfind.evaluation import evaluate
        from circuitfind.graph import parse_edge, parse_node

        if isinstance(point, bool) or not isinstance(point, int):
            raise InputError(f"point must be an integer; got {point!r}")
        if not 0 <= point < len(self.points):
            raise InputError(f"point {point} is not a slider point (0 to {len(self.points) - 1})")
        g = self.circuit.graph
        mask = self.points[point].mask.clone()
        removed = []
        for raw in ablate_nodes:
            name = parse_node(str(raw), g.cfg)
            if name in ("input", "logits") or name not in g.nodes:
                raise InputError(f"cannot ablate node {raw!r}: name a head or an MLP of this model")
            mask[g.sender_index[name], :] = False
            for r in g.receivers:
                if r.node == name:
                    mask[:, r.index] = False
            removed.append(g.nodes[name].label)
        for raw in ablate_edges:
            name = parse_edge(str(raw), g.cfg)
            if name not in g.edges:
                raise InputError(f"{raw!r} is not an edge of this model's graph")
            e = g.edges[name]
            mask[e.sender_index, e.receiver_index] = False
            removed.append(name)
        with self.lock:
            ev = evaluate(self.model, self.task, self.circuit.with_edges(mask), runs=self.runs)
        return {
            "point": point,
            "removed": removed,
            "n_edges": int(mask.sum()),
            **{
                k: v
                for k, v in ev.to_dict().items()
                if k
                in (
                    "faithfulness",
                    "faithfulness_stderr",
                    "faithfulness_ci",
                    "effect",
                    "effect_stderr",
                    "reliable",
                    "warning",
                    "n_prompts",
                )
            },
        }


def _handler(session: ExplorerSession) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            logger.info("%s " + format, self.address_string(), *args)

        def _send(self, code: int, body: bytes, kind: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, data: Any) -> None:
            self._send(code, json.dumps(data).encode(), "application/json")

        def do_GET(self) -> None:
            path = self.path.split("?")[0].split("#")[0]
            if path in ("/", "/index.html", "/explorer.html"):
                self._send(200, session.page, "text/html; charset=utf-8")
            elif path == "/favicon.ico":
                self._send(204, b"", "image/x-icon")
            elif path == "/api/points":
                self._json(
                    200,
                    [
                        {"label": p.label, "n_edges": p.n_edges, "faithfulness": p.faithfulness}
                        for p in session.points
                    ],
                )
            else:
                self._json(404, {"error": f"no page {path}: open /"})

        def do_POST(self) -> None:
            if self.path.split("?")[0] != "/api/evaluate":
                self._json(404, {"error": f"no endpoint {self.path}: POST /api/evaluate"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > 1_000_000:
                    raise InputError("request too large")
                body = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(body, dict):
                    raise InputError("send a JSON object")
                result = session.evaluate(
                    body.get("point", 0),
                    list(body.get("ablate_nodes") or []),
                    list(body.get("ablate_edges") or []),
                )
            except (CircuitfindError, ValueError) as exc:
                self._json(400, {"error": str(exc)})
                return
            self._json(200, result)

    return Handler


def make_server(session: ExplorerSession, host: str = "127.0.0.1", port: int = 8765) -> HTTPServer:
    """An HTTP server for ``session`` (``port=0`` picks a free port: ``server.server_port``)."""
    return HTTPServer((host, port), _handler(session))
