"""The memory plan: a method's peak memory estimated before it runs, and the batch that fits.

A plan adds up named terms, each from the model's shape, the prompts (n, positions), the batch
size and the dtype:

- ``parameters``: the model's weights (counted, not estimated);
- terms that scale with **every prompt** (``PreparedRuns`` keeps each batch's ablated values,
  and for masked-run and exact methods its clean cache and clean-minus-ablated differences, for
  the whole run): lowering the batch size does not shrink them;
- terms that scale with **one batch** (activations, autograd's saved tensors, gradient probes,
  the per-layer receiver-gradient blocks, masked-run stacks): the batch size is chosen so that
  they fit;
- fixed terms (the [senders x receivers] score sums in float64).

A method that reads each batch once (its table row's ``streams``: EAP and EAP-IG) can instead
run over *streaming* prepared runs (:class:`circuitfind.runs.PreparedRuns`), which keep one
batch's values at a time: its every-prompt terms become one-batch terms (and EAP writes its
sender differences over the ablated values). The plan streams when that lets a larger batch fit
the budget than keeping every prompt's values, or when only streaming fits at all.

The per-token coefficients of activation terms (how many d_model-, H*p- and d_mlp-wide tensors
a layer keeps alive) were counted with :class:`circuitfind.memory.PeakMeter` on GPT-2 and Llama
shapes; ``tests/test_plan.py`` checks the whole estimate is within 25% of the measured peak on
three other shapes. Which term function a method uses (:mod:`circuitfind.plan_terms`) is its
table row's ``memory`` field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from circuitfind.errors import InputError
from circuitfind.memory import format_bytes

__all__ = [
    "MemoryPlan",
    "Shape",
    "Term",
    "auto_batch_size",
    "estimate",
    "make_plan",
    "shape_of",
]

Scale = Literal["fixed", "prompts", "batch"]

MAX_AUTO_BATCH = 32
"""The largest batch ``batch_size="auto"`` picks (the old default; larger batches change a run's
checkpoint fingerprint and gain little on a CPU)."""


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a model: its graph's size and its tensor widths."""

    n_layers: int
    n_heads: int
    d_model: int
    d_mlp: int
    gated_mlp: bool
    d_vocab: int
    dtype_bytes: int
    param_bytes: int
    post_norms: bool = False
    d_head: int = 0
    mlp_live: float = 2.0
    rotary: bool = False

    @property
    def n_senders(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def n_receivers(self) -> int:
        return self.n_layers * (3 * self.n_heads + 1) + 1


@dataclass(frozen=True)
class Term:
    """One part of a peak: ``bytes`` at the planned batch size, and what it scales with.

    ``phase``: empty for a part that is alive through the peak; parts of named phases
    (``backward``, ``contract``) are alive only in that phase, and the peak counts the largest
    phase only."""

    name: str
    bytes: int
    scales: Scale
    note: str = ""
    phase: str = ""


@dataclass
class MemoryPlan:
    """The planned peak of one method run.

    Attributes:
        method: the method's canonical name.
        n_prompts, positions: the prompts and their (longest) length.
        batch_size: the batch the plan is for (chosen, or given).
        dtype: the model's dtype name.
        terms: every part of the peak at ``batch_size``.
        budget: the memory budget in bytes (None: none given).
        budget_source: where the budget came from (``--max-memory``, the device's free memory).
        method_kwargs: extra keyword arguments for the method that keep it in budget
            (exact patching's ``max_tokens_per_pass``).
        streaming: whether the run streams its prepared runs (one batch's values at a time).
    """

    method: str
    n_prompts: int
    positions: int
    batch_size: int
    dtype: str
    terms: list[Term]
    budget: int | None = None
    budget_source: str = ""
    method_kwargs: dict[str, Any] = field(default_factory=dict)
    streaming: bool = False

    @property
    def total(self) -> int:
        """The estimated peak, bytes (parameters included)."""
        return peak_of(self.terms)

    @property
    def working(self) -> int:
        """The estimated peak without the parameters (what the run itself allocates)."""
        return peak_of([t for t in self.terms if t.name != "parameters"])

    @property
    def fits(self) -> bool:
        return self.budget is None or self.total <= self.budget

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: the terms, the totals and the choice."""
        return {
            "method": self.method,
            "n_prompts": self.n_prompts,
            "positions": self.positions,
            "dtype": self.dtype,
            "batch_size": self.batch_size,
            "method_kwargs": dict(self.method_kwargs),
            "streaming": self.streaming,
            "terms": [asdict(t) for t in self.terms],
            "total_bytes": self.total,
            "working_bytes": self.working,
            "budget_bytes": self.budget,
            "budget_source": self.budget_source,
            "fits": self.fits,
        }

    def table(self) -> str:
        """A human table of the terms, the total and the choice."""
        width = max(len(t.name) for t in self.terms)
        lines = [
            f"memory plan: {self.method}, {self.n_prompts} prompts x {self.positions} positions, "
            f"{self.dtype}, batch size {self.batch_size}"
        ]
        for t in self.terms:
            phase = f" [{t.phase} phase]" if t.phase else ""
            size = format_bytes(t.bytes)
            lines.append(f"  {t.name:<{width}}  {size:>10}  per {t.scales:<7} {t.note}{phase}")
        lines.append(f"  {'total (peak)':<{width}}  {format_bytes(self.total):>10}")
        if self.budget is not None:
            lines.append(
                f"  {'budget':<{width}}  {format_bytes(self.budget):>10}  ({self.budget_source})"
            )
        for key, value in self.method_kwargs.items():
            lines.append(f"  chunking: {key} = {value}")
        if self.streaming:
            lines.append("  streaming: one batch's prepared runs alive at a time")
        return "\n".join(lines)


def shape_of(model: Any) -> Shape:
    """The :class:`Shape` of a circuitfind ``Model``."""
    cfg = model.cfg
    params = sum(p.numel() * p.element_size() for p in model.hf_model.parameters())
    return Shape(
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        d_model=cfg.d_model,
        d_mlp=cfg.d_mlp,
        gated_mlp=cfg.gated_mlp,
        d_vocab=cfg.d_vocab,
        dtype_bytes=model.dtype.itemsize,
        param_bytes=int(params),
        post_norms=cfg.post_norms,
        d_head=cfg.d_head,
        mlp_live=_mlp_live(_activation(model), cfg.gated_mlp),
        rotary=cfg.positional == "rotary",
    )


def _activation(model: Any) -> str:
    config = getattr(model.hf_model, "config", None)
    for attr in ("activation_function", "hidden_act", "hidden_activation"):
        value = getattr(config, attr, None)
        if isinstance(value, str):
            return value
    return ""


def _mlp_live(act: str, gated: bool) -> float:
    """d_mlp-wide tensors one MLP keeps alive at once (for backward, or inside a no-grad run):
    a fused activation (relu, exact or tanh GELU, SiLU; ``gelu_new`` runs as torch's tanh
    GELU) two, HF's composed ``gelu_fast`` four, ``quick_gelu`` three, a gated MLP three."""
    if gated:
        return 3.0
    if "fast" in act:
        return 4.0
    return 3.0 if "quick" in act else 2.0


# ------------------------------------------------------------------------------ plans
def estimate(
    shape: Shape,
    method: str,
    *,
    n: int,
    positions: int,
    batch_size: int,
    ablation: str = "resample",
    options: Mapping[str, Any] | None = None,
    columns: int = 0,
    streaming: bool = False,
) -> list[Term]:
    """Every term of ``method``'s peak at this batch size (parameters first); ``columns``: the
    position columns of a position-aware run (0: position-free); ``streaming``: over streaming
    prepared runs (a method whose row ``streams``)."""
    from circuitfind.methods.table import method_spec
    from circuitfind.plan_terms import _Dims

    spec = method_spec(method)
    if not spec.memory:
        raise InputError(
            f"method {spec.name!r} declares no memory terms (its table row's 'memory')"
        )
    fn = _term_function(spec.memory)
    if streaming and not spec.streams:
        raise InputError(f"{spec.name} reads its prepared runs more than once: it cannot stream")
    dims = _Dims(
        shape, n, positions, min(batch_size, n), ablation, dict(options or {}), columns, streaming
    )
    terms = [Term("parameters", shape.param_bytes, "fixed", "the model's weights")]
    return terms + list(fn(dims))


def _term_function(path: str) -> Any:
    import importlib

    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def peak_of(terms: list[Term]) -> int:
    """The peak of ``terms``: every always-alive part plus the largest phase."""
    phases: dict[str, int] = {}
    for t in terms:
        if t.phase:
            phases[t.phase] = phases.get(t.phase, 0) + t.bytes
    return sum(t.bytes for t in terms if not t.phase) + max(phases.values(), default=0)


_total = peak_of


def auto_batch_size(
    shape: Shape,
    method: str,
    *,
    n: int,
    positions: int,
    budget: int,
    ablation: str = "resample",
    options: Mapping[str, Any] | None = None,
    max_batch: int = MAX_AUTO_BATCH,
    columns: int = 0,
    streaming: bool = False,
) -> int:
    """The largest batch (at most ``max_batch`` and ``n``) whose plan fits ``budget``; 0 when
    even one prompt does not."""
    best, lo, hi = 0, 1, max(1, min(max_batch, n))
    while lo <= hi:  # the estimate grows with the batch: bisect
        mid = (lo + hi) // 2
        terms = estimate(
            shape,
            method,
            n=n,
            positions=positions,
            batch_size=mid,
            ablation=ablation,
            options=options,
            columns=columns,
            streaming=streaming,
        )
        if _total(terms) <= budget:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


def make_plan(
    model: Any,
    task: Any,
    method: str,
    *,
    ablation: str = "resample",
    batch_size: int | str = "auto",
    max_memory: int | str | None = None,
    options: Mapping[str, Any] | None = None,
    max_batch: int = MAX_AUTO_BATCH,
    columns: int = 0,
    streaming: bool | str = "auto",
) -> MemoryPlan:
    """The memory plan of ``method`` on (model, task): terms, total and batch size.

    Args:
        batch_size: a positive integer (planned as given) or ``"auto"``: the largest batch up to
            ``max_batch`` that fits the budget.
        max_memory: the budget (bytes or ``"4GiB"``); default: what the model's device has free.
        columns: the position columns of a position-aware run (``PositionLayout.n_columns``;
            0: position-free): the [S, R, P] score sums and a positional mask's terms.
        streaming: ``"auto"`` (stream where the method can and that lets a larger batch fit,
            or is the only way to fit), True (stream; the method must be able to) or False.

    Raises:
        InputError: ``batch_size="auto"`` and even one prompt a batch does not fit the budget
            (the message gives the estimate at batch size 1 and the budget).
    """
    from circuitfind.memory import free_bytes, parse_bytes
    from circuitfind.methods.table import method_options, method_spec
    from circuitfind.patching import ablation_kind

    spec = method_spec(method)
    opts = method_options(spec, options)
    kind = ablation_kind(ablation)
    shape = shape_of(model)
    n = len(task)
    positions = int(task.readout.max()) + 1
    if max_memory is None:
        budget, source = free_bytes(model.device), f"free on {model.device} now"
        budget += shape.param_bytes  # already loaded: they are not part of what is free
    else:
        budget, source = parse_bytes(max_memory), "--max-memory"
    if not spec.memory:  # a method registered without memory terms: nothing to plan
        b = batch_size if isinstance(batch_size, int) and batch_size >= 1 else max_batch
        return MemoryPlan(
            method=spec.name,
            n_prompts=n,
            positions=positions,
            batch_size=min(b, n),
            dtype=str(model.dtype).removeprefix("torch."),
            terms=[
                Term("parameters", shape.param_bytes, "fixed", "the model's weights"),
                Term("(not declared)", 0, "fixed", "the method's table row has no memory terms"),
            ],
            budget=budget,
            budget_source=source,
        )
    if spec.name == "exact" and opts.get("max_tokens_per_pass") is None:
        from circuitfind.methods.exact import tokens_per_pass

        opts["max_tokens_per_pass"] = tokens_per_pass(model.device)
    kwargs: dict[str, Any] = {}
    if streaming not in ("auto", True, False):
        raise InputError(f"streaming must be 'auto', True or False; got {streaming!r}")
    if streaming is True and not spec.streams:
        raise InputError(f"{spec.name} reads its prepared runs more than once: it cannot stream")
    can_stream = spec.streams and streaming is not False
    stream = streaming is True

    def terms_at(size: int, o: Mapping[str, Any], streamed: bool) -> list[Term]:
        return estimate(
            shape,
            spec.name,
            n=n,
            positions=positions,
            batch_size=size,
            ablation=kind,
            options=o,
            columns=columns,
            streaming=streamed,
        )

    def fit(o: Mapping[str, Any], streamed: bool) -> int:
        return auto_batch_size(
            shape,
            spec.name,
            n=n,
            positions=positions,
            budget=budget,
            ablation=kind,
            options=o,
            max_batch=max_batch,
            columns=columns,
            streaming=streamed,
        )

    if batch_size == "auto":
        candidates: list[tuple[dict[str, Any], dict[str, Any]]] = [(opts, {})]
        if spec.name == "exact":  # fewer edges a pass before refusing
            candidates += [
                ({**opts, "max_tokens_per_pass": t}, {"max_tokens_per_pass": t})
                for t in (1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1)
                if t >= positions
            ]
        b = 0
        for o, kw in candidates:
            b = fit(o, stream)
            if can_stream and not stream and b < min(n, max_batch):
                b_stream = fit(o, True)
                if b_stream > b:
                    b, stream = b_stream, True
            if b:
                opts, kwargs = o, kw
                break
        if b == 0:
            one = terms_at(1, opts, bool(can_stream))
            worst = max(one[1:], key=lambda t: t.bytes)
            raise InputError(
                f"{spec.name} on {n} prompts x {positions} positions needs about "
                f"{format_bytes(_total(one))} even at batch size 1, over the budget of "
                f"{format_bytes(budget)} ({source}); the largest part is {worst.name} "
                f"({format_bytes(worst.bytes)}, per {worst.scales}): use fewer or shorter "
                "prompts, a smaller dtype (bfloat16), or a larger --max-memory"
            )
    elif isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1:
        b = batch_size
        if can_stream and not stream:
            kept, streamed = (_total(terms_at(b, opts, s)) for s in (False, True))
            stream = kept > budget and streamed <= budget
    else:
        raise InputError(f"batch size must be a positive integer or 'auto'; got {batch_size!r}")
    terms = terms_at(b, opts, stream)
    return MemoryPlan(
        method=spec.name,
        n_prompts=n,
        positions=positions,
        batch_size=min(b, n),
        dtype=str(model.dtype).removeprefix("torch."),
        terms=terms,
        budget=budget,
        budget_source=source,
        method_kwargs=kwargs,
        streaming=stream,
    )
