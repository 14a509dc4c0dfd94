"""Run the EAP-IG reference code (hannamw/EAP-IG) on weights saved by circuitfind.

Runs inside the EAP-IG virtual environment (``setup_venv.sh``), never in circuitfind's own. It
imports nothing from circuitfind. Usage:

    .venv-eapig/bin/python benchmarks/eapig/run_eapig.py WORK_DIR

WORK_DIR holds ``request.json`` (``methods``, ``ig_steps``, ``repeat``, ``threads``) and, as for
the auto-circuit runner, ``model/config.json`` (a GPT2Config dict), ``model/model.safetensors``
and ``model/tokens.safetensors`` (clean, corrupted [n, T]; answer, wrong [n]). Results go to
``WORK_DIR/result.json``: wall times of every run and every edge's score under EAP-IG's edge
names (``a0.h1->a1.h2<q>``, ``input->m0``, ``m1->logits``, as circuitfind's).

Two adaptations, at run time, none to EAP-IG's code: its score matrices are allocated with
``device='cuda'`` (here: the CPU), and its ``tokenize_plus`` takes strings (here: the saved
token ids are passed as they are, every position real, no BOS added).
"""

from __future__ import annotations

import json
import os
import sys
import time
import types
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch as t
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "autocircuit"))
from run_autocircuit import _tl_model


class _CpuTorch(types.ModuleType):
    """``torch``, except that ``zeros(..., device='cuda')`` allocates on the CPU."""

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name: str):
        return getattr(t, name)

    @staticmethod
    def zeros(*args, **kwargs):
        if str(kwargs.get("device", "")).startswith("cuda") and not t.cuda.is_available():
            kwargs["device"] = "cpu"
        return t.zeros(*args, **kwargs)


def _tokens(model, inputs, max_length=None):
    """EAP-IG's ``tokenize_plus`` for token ids: (tokens, mask, lengths, n_pos)."""
    tokens = inputs
    mask = t.ones_like(tokens)
    return tokens, mask, mask.sum(1), tokens.shape[1]


def main() -> None:
    work = Path(sys.argv[1])
    request = json.loads((work / "request.json").read_text())
    t.set_num_threads(int(request.get("threads", t.get_num_threads())))
    import transformer_lens
    from eap import attribute as attr
    from eap.graph import Graph

    attr.torch = _CpuTorch()  # type: ignore[assignment]
    attr.tokenize_plus = _tokens
    model, parity = _tl_model(work / "model")
    for p in model.parameters():  # as EAP-IG runs it: its EAP backward starts from the weights
        p.requires_grad_(True)
    toks = load_file(str(work / "model" / "tokens.safetensors"))
    label = t.stack([toks["answer"], toks["wrong"]], 1)
    loader = [(toks["clean"], toks["corrupted"], label)]

    def metric(logits, clean_logits, input_lengths, labels):
        """Logit difference (answer - wrong) at each prompt's last position, summed over the
        batch (EAP-IG divides the scores by the number of prompts)."""
        rows = t.arange(len(logits))
        last = logits[rows, input_lengths - 1]
        return (last[rows, labels[:, 0]] - last[rows, labels[:, 1]]).sum()

    out: dict = {
        "versions": {
            "transformer_lens": __import__("importlib.metadata").metadata.version(
                "transformer-lens"
            ),
            "eap": __import__("importlib.metadata").metadata.version("eap"),
            "torch": t.__version__,
        },
        "tl_vs_hf_max_abs_logit_diff": parity,
        "runs": {},
    }
    del transformer_lens
    repeat = int(request.get("repeat", 1))
    for spec in request["methods"]:  # {"name": "EAP" | "EAP-IG-inputs", "steps": k, "repeat"}
        name, steps = spec["name"], spec.get("steps")
        reps = int(spec.get("repeat", repeat))
        times, scores = [], {}
        for i in range(reps + 1):  # the first is a warm-up
            graph = Graph.from_model(model)
            start = time.perf_counter()
            attr.attribute(model, graph, loader, metric, method=name, ig_steps=steps, quiet=True)
            if i > 0 or reps == 0:
                times.append(time.perf_counter() - start)
            if i == 0:
                scores = {e.name: float(e.score) for e in graph.edges.values()}
            if reps == 0:
                break
        key = name if steps is None else f"{name}@{steps}"
        out["runs"][key] = {"seconds": times, "scores": scores, "n_edges": len(scores)}
        (work / "result.json").write_text(json.dumps(out))
    (work / "result.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main()
