"""Circuits in the shape the MIB circuit-localization track accepts, and read back.

MIB (Mueller et al. 2025; the BlackboxNLP 2025 shared task) takes one folder per task and model,
named ``{task}_{model}`` (``ioi_gpt2``, ``arc-easy_llama3``: underscores in the task written as
hyphens), holding either

1. one ``.json`` file of importance scores: a floating-point score for every edge
   (``importances.json``; MIB ranks edges by |score| and measures the circuits of 0.1% ... 100%
   of the edges itself), or
2. nine ``.json`` circuits with binary membership, one with at most each of 0.1, 0.2, 0.5, 1, 2,
   5, 10, 20 and 50% of the edges (:data:`MIB_PERCENTS`; MIB's 100% point is the full model).

A file is EAP-IG's graph JSON, the same shape as circuitfind's own:
``{"cfg": {"n_layers", "n_heads", "parallel_attn_mlp", "d_model"}, "nodes": {name: {"in_graph":
bool}}, "edges": {name: {"score": float, "in_graph": bool}}}``. :func:`to_mib` writes option 1 (and,
with ``circuits=True``, option 2 instead: MIB wants one or the other in a folder); each of its
circuits keeps the int(pct/100 x edges) edges of largest |score| and then drops edges not on a
path from input to logits (MIB's ``apply_topn(..., prune=True)``), so it has at most that many.
Edges circuitfind did not score (ACDC skips some) are written with score 0, as MIB needs a
number. MIB also reads ``.pt`` files; those are pickles, which circuitfind never loads.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from circuitfind.checkpoint import atomic_write_text
from circuitfind.circuit import Circuit
from circuitfind.errors import InputError
from circuitfind.pruning import remove_dangling, top_n
from circuitfind.strict_json import dumps

__all__ = ["IMPORTANCES", "MIB_MODELS", "MIB_PERCENTS", "folder_name", "from_mib", "to_mib"]

MIB_PERCENTS: tuple[float, ...] = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50)
IMPORTANCES = "importances.json"
MIB_MODELS: dict[str, str] = {  # MIB's short names of its models
    "gpt2": "gpt2",
    "openai-community/gpt2": "gpt2",
    "qwen/qwen2.5-0.5b": "qwen2.5",
    "google/gemma-2-2b": "gemma2",
    "meta-llama/llama-3.1-8b": "llama3",
}
_CIRCUIT_FILE = re.compile(r"^circuit_(\d+(?:\.\d+)?)pct\.json$")


def folder_name(task: str, model: str) -> str:
    """MIB's ``{task}_{model}`` folder name (MIB's short model name where it has one)."""
    short = MIB_MODELS.get(model.lower(), model)
    short = re.sub(r"[^A-Za-z0-9.\-]+", "-", short.removeprefix("zoo:")).strip("-").lower()
    t = re.sub(r"[^A-Za-z0-9.\-]+", "-", task.replace("_", "-")).strip("-").lower()
    if not t or not short:
        raise InputError(f"cannot name a MIB folder from task {task!r} and model {model!r}")
    return f"{t}_{short}"


def _mib_dict(circuit: Circuit, keep: torch.Tensor, scores: bool) -> dict[str, Any]:
    """A circuit file in MIB's (EAP-IG's) shape with ``keep`` as its edges."""
    c = circuit.with_edges(keep)
    data = c.to_dict()
    data["nodes"] = {k: {"in_graph": v["in_graph"]} for k, v in data["nodes"].items()}
    for entry in data["edges"].values():
        if scores:
            entry["score"] = 0.0 if entry["score"] is None else entry["score"]
        else:
            entry["score"] = None
    data["meta"] = {k: v for k, v in circuit.meta.items() if k not in ("stability", "ensemble")}
    return data


def to_mib(
    circuit: Circuit,
    out_dir: str | os.PathLike[str],
    *,
    task: str | None = None,
    model: str | None = None,
    circuits: bool = False,
) -> Path:
    """Write ``circuit`` for MIB under ``out_dir/{task}_{model}/`` (module docstring): its
    importance scores as ``importances.json``, or with ``circuits=True`` the nine circuits
    ``circuit_{pct}pct.json`` instead. ``task`` / ``model`` default to the circuit's meta.
    Returns the folder."""
    task = task or circuit.meta.get("task")
    model = model or circuit.meta.get("model")
    if not task or not model:
        raise InputError("to_mib needs the task and model names (pass task= and model=)")
    if not circuit.has_scores:
        raise InputError("the circuit has no edge scores: MIB needs a score for every edge")
    folder = Path(out_dir) / folder_name(str(task), str(model))
    folder.mkdir(parents=True, exist_ok=True)
    stale = [
        p for p in folder.glob("*.json") if p.name == IMPORTANCES or _CIRCUIT_FILE.match(p.name)
    ]
    for p in stale:  # MIB wants one kind of file per folder
        p.unlink()
    graph = circuit.graph
    if not circuits:
        data = _mib_dict(circuit, circuit.in_graph, scores=True)
        atomic_write_text(folder / IMPORTANCES, dumps(data))
        return folder
    scores = circuit.score_matrix.nan_to_num(0.0)
    for pct in MIB_PERCENTS:
        keep = remove_dangling(graph, top_n(graph, scores, int(graph.n_edges * pct / 100)))
        data = _mib_dict(circuit, keep, scores=False)
        data["meta"]["mib_percent"] = pct
        atomic_write_text(folder / f"circuit_{pct:g}pct.json", dumps(data))
    return folder


def _read(path: Path) -> Circuit:
    if path.suffix == ".pt":
        raise InputError(
            f"{path}: MIB's .pt circuit files are pickles, which circuitfind never loads; "
            "write the circuit as .json (MIB reads both)"
        )
    return Circuit.from_json(path)


def _percent(name: str) -> float | None:
    match = _CIRCUIT_FILE.match(name) or re.search(r"(\d+(?:\.\d+)?)", name)
    return float(match.group(1)) if match else None


def from_mib(path: str | os.PathLike[str]) -> Circuit:
    """A circuit from MIB files: one file; a ``{task}_{model}`` folder of importance scores (one
    .json) or of circuits at several sizes; or a folder holding one such folder.

    From circuits at several sizes, an edge's score is the share of them that keep it (so
    ranking by score gives back the nested circuits) and the circuit is the largest;
    ``meta["mib"]`` records the format and each file's size."""
    p = Path(path)
    if p.is_file():
        c = _read(p)
        c.meta.setdefault("mib", {"format": "importances", "files": [p.name]})
        return c
    if not p.is_dir():
        raise InputError(f"{p}: no such MIB file or folder")
    files = sorted(f for f in p.iterdir() if f.suffix in (".json", ".pt") and f.is_file())
    if not files:
        subs = [d for d in p.iterdir() if d.is_dir() and "_" in d.name]
        if len(subs) == 1:
            return from_mib(subs[0])
        raise InputError(
            f"{p}: no .json circuit files here (and not one {{task}}_{{model}} folder in it: "
            f"found {len(subs)}); pass the folder of one task and model"
        )
    if len(files) == 1:
        c = _read(files[0])
        c.meta.setdefault("mib", {"format": "importances", "files": [files[0].name]})
        return c
    loaded = [(f, _read(f)) for f in files]
    shapes = {(c.graph.cfg.n_layers, c.graph.cfg.n_heads) for _, c in loaded}
    if len(shapes) != 1:
        raise InputError(f"{p}: the circuit files are for models of different shapes {shapes}")
    masks = torch.stack([c.in_graph for _, c in loaded]).float()
    largest = int(masks.sum((1, 2)).argmax())
    base = loaded[largest][1]
    share = masks.mean(0)
    share[~base.graph.valid] = float("nan")
    meta = {k: v for k, v in base.meta.items() if k != "mib_percent"}
    meta["mib"] = {
        "format": "circuits",
        "files": [f.name for f, _ in loaded],
        "sizes": {f.name: {"percent": _percent(f.name), "n_edges": c.n_edges} for f, c in loaded},
    }
    return Circuit(base.graph, share, base.in_graph, meta, None)
