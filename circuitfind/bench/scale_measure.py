"""What the scale suite measures besides time: peak resident memory (:func:`peak_rss`) and
live tensors (``PeakMeter``), the bare HF forward + backward's peaks, the memory plan's run of a
method under a budget, and EAP's score contraction alone (:func:`contraction_seconds`).

Peak memory is :func:`peak_rss`: the high-water mark of the process's resident memory during
the call (Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` just before it) minus the
resident memory at the start, after ``gc`` and ``malloc_trim`` hand freed memory back.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from circuitfind.bench.common import time_it
from circuitfind.bench.speed.cases import Case
from circuitfind.bench.speed.rules import _run, method_kwargs, prepared_runs

__all__ = ["contraction_seconds", "peak_rss"]


def _status_kb(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    if m is None:
        raise RuntimeError(f"/proc/self/status has no {key} (peak memory needs Linux)")
    return int(m.group(1))


def _trim() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: freed memory may stay
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_rss(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(peak resident bytes ``fn`` added over the memory resident when it started, its result).

    Linux only: resets the high-water mark (``echo 5 > /proc/self/clear_refs``) after handing
    freed memory back (``gc``, ``malloc_trim``), runs ``fn`` and reads ``VmHWM``.
    """
    _trim()
    start = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    out = fn()
    peak = _status_kb("VmHWM")
    return max(0, peak - start) * 1024.0, out


def _hf_memory(case: Case) -> dict[str, float]:
    """Peak bytes of the bare HF forward and forward + backward (as ``hf_baseline`` times them:
    the backward fills the parameters' gradients) over the task's clean batch: resident memory,
    and (``FB_meter_bytes``) the live tensor bytes ``PeakMeter`` counts, the plan's measure."""
    from circuitfind.memory import PeakMeter

    hf, task = case.hf, case.task
    tokens, readout = task.clean, task.readout
    rows = torch.arange(len(task))

    def forward() -> None:
        with torch.no_grad():
            hf(input_ids=tokens, attention_mask=task.attention_mask)

    def forward_backward() -> None:
        hf.zero_grad(set_to_none=True)
        logits = hf(input_ids=tokens, attention_mask=task.attention_mask).logits[rows, readout]
        logits.float().logsumexp(-1).sum().backward()

    def activations_backward() -> None:
        """Forward + backward to the input embeddings only (no parameter gradients)."""
        embeds = hf.get_input_embeddings()(tokens).detach().requires_grad_(True)
        logits = hf(inputs_embeds=embeds, attention_mask=task.attention_mask).logits
        logits[rows, readout].float().logsumexp(-1).sum().backward()

    forward()
    f = peak_rss(forward)[0]
    forward_backward()
    hf.zero_grad(set_to_none=True)
    fb = peak_rss(forward_backward)[0]
    hf.zero_grad(set_to_none=True)
    grads = [p.requires_grad for p in hf.parameters()]
    for p in hf.parameters():
        p.requires_grad_(False)
    try:
        fb_act = peak_rss(activations_backward)[0]
    finally:
        for p, g in zip(hf.parameters(), grads, strict=True):
            p.requires_grad_(g)
    with PeakMeter() as meter:
        forward_backward()
    hf.zero_grad(set_to_none=True)
    return {
        "F_bytes": f,
        "FB_bytes": fb,
        "FB_activations_bytes": fb_act,
        "FB_meter_bytes": float(meter.peak),
    }


def contraction_seconds(case: Case, batch_size: int, repeat: int) -> float:
    """Seconds of EAP's score contraction alone over the case's prompts in batches of
    ``batch_size``: ``eap._contract`` on random fp32 differences [S, b, p, d] and receiver
    gradients (one [3H + 1, b, p, d] block per layer and the logits'), the products every edge
    score is, with no forward or backward around them (median of ``repeat``)."""
    from circuitfind.methods.eap import _contract

    model, graph = case.model, case.graph
    n, p = case.task.clean.shape
    d, H, L = model.cfg.d_model, model.cfg.n_heads, model.cfg.n_layers
    g = torch.Generator().manual_seed(0)
    sizes = [min(batch_size, n - i) for i in range(0, n, batch_size)]
    data = {
        b: (
            torch.randn(graph.n_senders, b, p, d, generator=g),
            torch.randn(3 * H + 1, b, p, d, generator=g),
        )
        for b in set(sizes)
    }
    totals = torch.zeros(graph.n_senders, graph.n_receivers)

    def run() -> None:
        for b in sizes:
            diff, block = data[b]
            for layer in range(L):
                _contract(graph, diff, block, layer * (3 * H + 1), totals)
            _contract(graph, diff, block[:1], L * (3 * H + 1), totals)

    return time_it(run, repeat).seconds


def _planned(case: Case, name: str, options: dict[str, Any], budget: int) -> Any:
    """The memory plan of ``name`` on the case under ``budget`` bytes (parameters included)."""
    from circuitfind.plan import make_plan

    opts = method_kwargs(name, options)
    return make_plan(case.model, case.task, name, max_memory=budget, options=opts)


def _run_planned(case: Case, name: str, options: dict[str, Any], plan: Any) -> Any:
    """One run of ``name`` as ``plan`` runs it: its batch size, streaming where it chose to."""
    return _run(name, case, options, prepared_runs(case, plan.batch_size, plan.streaming))


def _meter_peak(fn: Callable[[], Any]) -> float:
    from circuitfind.memory import PeakMeter

    with PeakMeter() as meter:
        fn()
    return float(meter.peak)
