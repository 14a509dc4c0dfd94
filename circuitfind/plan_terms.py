"""The memory plan's terms, one function per kind of method (a method table row's ``memory``).

Each takes the sizes of a run (:class:`_Dims`: the model's :class:`circuitfind.plan.Shape`, the
prompts, positions, batch size, ablation, options, position columns and whether the prepared
runs stream) and returns the :class:`circuitfind.plan.Term` list of its peak; see
:mod:`circuitfind.plan` for how terms add up to a plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from circuitfind.plan import Shape, Term

__all__ = [
    "acdc_terms",
    "eap_ig_activations_terms",
    "eap_ig_inputs_terms",
    "eap_terms",
    "exact_terms",
    "exact_variants",
    "mask_terms",
    "masked_terms",
]

# ------------------------------------------------------------------------------ terms
# Counts of live tensors, read off PeakMeter breakdowns of this code's runs (GPT-2, Llama):
_ATTN_MAPS = 1.75  # attention maps [b, H, p, p] a probed layer keeps for backward
_LAYER_D = 5.5  # d_model-wide tensors a probed layer keeps for backward (probes apart)
_ROTARY_D = 2.0  # more of them where queries and keys are rotated
_BLOCK_EXTRA = 8  # d_model-wide fp32 temporaries of one receiver-gradient block
_PASS_D = 3  # d_model-wide tensors of a patched pass (deltas, shifted input, its norm)
_MASK_STATE = 6  # [S, R] fp32 tensors of a learned mask's training (logits, grad, Adam, ...)
_MASK_STATE_POSITIONS = 8  # [S, R, P] fp32 tensors of a position-aware mask's training
_POSITIONAL_STACKS = 0.5  # of every receiver group's stacked differences, alive at the peak


@dataclass(frozen=True)
class _Dims:
    """The sizes a term function reads: shape, prompts, batch, ablation, options, and the
    position columns of a position-aware run (0: position-free)."""

    shape: Shape
    n: int
    p: int
    b: int
    ablation: str
    options: Mapping[str, Any]
    columns: int = 0
    streaming: bool = False

    def stream(self, tokens: int, nbytes: int | None = None) -> int:
        """Bytes of ``tokens`` d_model-wide vectors (model dtype unless ``nbytes``)."""
        return tokens * self.shape.d_model * (self.shape.dtype_bytes if nbytes is None else nbytes)

    def mlp(self, tokens: int) -> int:
        """One MLP's live hidden tensors over ``tokens`` tokens."""
        s = self.shape
        return int(s.mlp_live * tokens * s.d_mlp * s.dtype_bytes)


def _ablated(d: _Dims) -> Term:
    s = d.shape
    if d.ablation == "resample" and d.streaming:
        size = d.stream(s.n_senders * d.b * d.p)
        return Term("ablated values", size, "batch", "[S, b, p, d]: one batch's (streaming)")
    if d.ablation == "resample":
        size, note = d.stream(s.n_senders * d.n * d.p), "[S, n, p, d]: corrupted node outputs"
    elif d.ablation == "mean-positional":
        size, note = d.stream(s.n_senders * d.p), "[S, p, d]: mean node outputs"
    else:
        size, note = d.stream(s.n_senders), "[S, d]"
    return Term("ablated values", size, "prompts", note)


def _scores(d: _Dims) -> Term:
    s = d.shape
    if d.columns:
        size = s.n_senders * s.n_receivers * d.columns * 8 * 2
        return Term("score sums", size, "fixed", "[S, R, P] float64")
    return Term("score sums", s.n_senders * s.n_receivers * 8 * 2, "fixed", "[S, R] float64")


def _score_sums_fp32(d: _Dims) -> Term:
    """EAP's score sums: fp32 on the model's device, divided in place at the end."""
    s = d.shape
    cells = s.n_senders * s.n_receivers * max(1, d.columns)
    shape = "[S, R, P]" if d.columns else "[S, R]"
    return Term("score sums", cells * 4, "fixed", f"{shape} float32")


def _clean_runs(d: _Dims, diff: bool = True) -> list[Term]:
    """The clean cache of every batch (and, for masked runs, clean - ablated), kept."""
    s = d.shape
    cache = d.stream((s.n_senders + 2 * s.n_layers) * d.n * d.p)
    out = [Term("clean caches", cache, "prompts", "node outputs + residual streams, every batch")]
    if diff:
        out.append(
            Term("clean - ablated", d.stream(s.n_senders * d.n * d.p), "prompts", "[S, n, p, d]")
        )
    return out


def eap_terms(d: _Dims) -> list[Term]:
    """EAP and EAP-IG: sender differences, a probed forward's saved tensors and probes (the
    backward phase), or the probe gradients and one layer's receiver-gradient block (the
    contraction phase), whichever is larger; with several IG steps the summed receiver
    gradients too."""
    s, t = d.shape, d.b * d.p
    mode = str(d.options.get("mode", "eap"))
    steps = int(d.options.get("steps", 1)) if mode != "eap" else 1
    L, H = s.n_layers, s.n_heads
    terms = [_ablated(d), _score_sums_fp32(d)]
    if d.streaming and d.ablation == "resample" and s.dtype_bytes == 4:
        note = "[S, b, p, d] fp32, written over the ablated values"
        terms.append(Term("sender differences", 0, "batch", note))
    else:
        diffs = d.stream(s.n_senders * t, 4)
        terms.append(Term("sender differences", diffs, "batch", "[S, b, p, d] fp32"))
    weights = 2 * 3 * H * s.d_model * s.d_head * 4
    terms.append(
        Term("projection weights", weights, "fixed", "one layer's norm-folded W_Q/K/V fp32, x2")
    )
    if steps > 1 and not s.post_norms:
        summed = d.stream(s.n_receivers * t, 4)
        terms.append(Term("summed gradients", summed, "batch", "[R, b, p, d] fp32"))
    if mode == "eap-ig-activations":
        terms += _clean_runs(d, diff=False)
        terms.append(
            Term("interpolated outputs", d.stream(2 * s.n_senders * t), "batch", "clean, targets")
        )
    probes = d.stream((4 * L + 1) * t)
    maps = int(_ATTN_MAPS * d.b * H * d.p * d.p * s.dtype_bytes)
    per_layer = _LAYER_D + (_ROTARY_D if s.rotary else 0.0)
    saved = L * (d.stream(int(per_layer * t)) + maps + d.mlp(t)) + probes
    terms.append(
        Term(
            "saved for backward", saved, "batch", "probed forward: probes + activations", "backward"
        )
    )
    terms.append(
        Term("backward temporaries", 3 * d.mlp(t) // 2, "batch", "MLP gradients", "backward")
    )
    grads = d.stream((4 * L + 1) * t, 4) + probes + d.stream(L * t)
    terms.append(
        Term("probe gradients", grads, "batch", "probes, their gradients, layer inputs", "contract")
    )
    block = d.stream((2 * (3 * H + 1) + _BLOCK_EXTRA) * t, 4)
    terms.append(
        Term("receiver gradients", block, "batch", "2 x [3H + 1, b, p, d] fp32", "contract")
    )
    return terms


def eap_ig_inputs_terms(d: _Dims) -> list[Term]:
    return eap_terms(_with(d, mode="eap-ig-inputs"))


def eap_ig_activations_terms(d: _Dims) -> list[Term]:
    return eap_terms(_with(d, mode="eap-ig-activations"))


def _with(d: _Dims, **options: Any) -> _Dims:
    opts = {"steps": 5, **d.options, **options}
    return _Dims(d.shape, d.n, d.p, d.b, d.ablation, opts, d.columns, d.streaming)


def exact_variants(d: _Dims, upstream: int | None = None) -> int:
    """Edges stacked in one patched pass: ``max_tokens_per_pass`` // (b * p), at least 1, at
    most a receiver's ``upstream`` senders."""
    tokens = int(d.options.get("max_tokens_per_pass") or 2048)
    most = d.shape.n_senders if upstream is None else upstream
    return max(1, min(most, tokens // (d.b * d.p)))


def exact_terms(d: _Dims) -> list[Term]:
    """Exact patching: the clean caches and differences, and one batched patched pass."""
    s, t = d.shape, d.b * d.p
    H = s.n_heads
    terms = [_ablated(d), _scores(d), *_clean_runs(d)]
    # the largest pass before the last layer (into layer L-2's MLP), all positions; in the
    # last layer only the readout positions run, but the deltas span every position
    V = exact_variants(d, 1 + max(0, s.n_layers - 2) * (H + 1) + H)
    mid = d.stream(_PASS_D * V * t) + d.mlp(V * t) if s.n_layers > 1 else 0
    V_last = exact_variants(d, s.n_senders - 1)
    last = d.stream(2 * V_last * t) + d.mlp(V_last * d.b)
    note = f"up to {max(V, V_last)} edges x b x p tokens"
    terms.append(Term("patched pass", max(mid, last), "batch", note))
    return terms


def masked_terms(d: _Dims, grad: bool = False) -> list[Term]:
    """ACDC and node ablation: the clean caches and differences, and one masked run (``grad``:
    one with autograd, whose sender differences are a list and stacked per receiver group)."""
    s, t = d.shape, d.b * d.p
    terms = [_ablated(d), _scores(d), *_clean_runs(d)]
    # the sender rows (one buffer without autograd, rows before the start layer read in place;
    # with autograd a list, stacked per receiver group, the stack freed after its backward)
    stacks = d.stream(s.n_senders * t)
    if grad:
        terms.append(Term("masked-run stacks", stacks, "batch", "[S, b, p, d] stacked rows"))
    else:
        terms.append(Term("masked-run rows", stacks, "batch", "[S, b, p, d] sender rows"))
    layer = d.stream(3 * t) + d.mlp(t)
    terms.append(Term("masked layer", layer, "batch", "one layer's activations"))
    return terms


def kept_sum_streams(s: Shape) -> int:
    """The most later-receiver sums that trials from one start layer keep, in [b, p, d]
    streams: a layer's q, k, v groups (their columns, up to 3 x n_heads) where the senders
    before the start layer are more than half those columns, each MLP where they are 1 or more
    (``masked_forward``'s rule)."""
    H, most = s.n_heads, 0
    for start in range(s.n_layers):
        k = 1 + start * (H + 1)
        cols = max((c for c in (3 * H, 2 * H, H) if c < 2 * k), default=0)
        # each later layer's q, k, v, and one column for each MLP from the start layer's to
        # the last but one (the last layer's MLP and the logits run at the readout, after the
        # kept sums; an MLP's one column is always fewer than 2 * k)
        most = max(most, (s.n_layers - 1 - start) * (cols + 1))
    return most


def acdc_terms(d: _Dims) -> list[Term]:
    """ACDC: a masked run's terms and the later receivers' prefix sums its trials share
    (:class:`circuitfind.sender_rows.PrefixSums`: at most the size of clean - ablated), and the
    constants those trials share."""
    s = d.shape
    kept = d.stream(min(s.n_senders, kept_sum_streams(s)) * d.n * d.p)
    note = "later receivers' sums over the earlier senders, every batch (at most clean - ablated)"
    # and each batch's running sums of the ablated outputs (entering each layer, after its
    # heads, at the end) and its prefix's sum, all also at the readout, and the prefix rows
    # and ablated outputs at the readout
    fixed = d.stream((2 * s.n_layers + 2) * d.n * (d.p + 1) + 2 * s.n_senders * d.n)
    return [
        *masked_terms(d),
        Term("trial prefix sums", kept, "prompts", note),
        Term("trial constants", fixed, "prompts", "ablated running sums, prefix readout rows"),
    ]


def _upstreams(s: Shape, heads: int) -> int:
    """Senders upstream of each receiver, summed over ``heads`` receivers per q, k and v (1: a
    receiver group, stacked together; n_heads: the edges), every MLP and the logits (an MLP
    counted as reading its layer's heads; a parallel one does not, an upper bound there)."""
    total = s.n_senders
    for layer in range(s.n_layers):
        before = 1 + layer * (s.n_heads + 1)
        total += 3 * heads * before + before + s.n_heads
    return total


def mask_terms(d: _Dims) -> list[Term]:
    """Learned masks (edge-pruning, UGS): a masked run's terms, the mask's training state, and
    what a masked forward keeps for its backward (every receiver's input, each layer's
    activations and attention maps).

    A position-aware mask ([S, R, P], ``d.columns`` = P) has P times the state, and its masked
    run (:func:`circuitfind.patching_positions.masked_forward_positional`) keeps for backward
    each receiver group's stacked sender differences and per-token weights (the position-free
    run stacks only the senders whose weight is not 1). Coefficients counted with
    :class:`circuitfind.memory.PeakMeter` on GPT-2 and Llama shapes (two to eight layers)."""
    s, t = d.shape, d.b * d.p
    terms = masked_terms(d, grad=True)
    if d.columns:
        state = s.n_senders * s.n_receivers * d.columns * 4 * _MASK_STATE_POSITIONS
        note = "[S, R, P] fp32: logits, grads, Adam, samples"
    else:
        state = s.n_senders * s.n_receivers * 4 * _MASK_STATE
        note = "[S, R] fp32: logits, grads, Adam, samples"
    terms.append(Term("mask state", state, "fixed", note))
    maps = int(_ATTN_MAPS * d.b * s.n_heads * d.p * d.p * s.dtype_bytes)
    saved = d.stream(s.n_receivers * t) + s.n_layers * (
        d.stream(int(_LAYER_D * t)) + maps + d.mlp(t)
    )
    terms.append(Term("saved for backward", saved, "batch", "receiver inputs + activations"))
    if d.columns:
        stacks = d.stream(int(_POSITIONAL_STACKS * _upstreams(s, 1) * t))
        weights = _upstreams(s, s.n_heads) * t * s.dtype_bytes
        terms.append(
            Term(
                "positional stacks",
                stacks + weights,
                "batch",
                "stacked differences [s, b, p, d] + weights [s, c, b, p] per receiver group",
            )
        )
    return terms
