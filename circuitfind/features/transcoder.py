"""Transcoders: sparse maps from what a layer reads to what it writes, in a documented layout.

A transcoder at site ``m{L}`` maps the MLP's input ``x`` (the post-norm stream the MLP reads)
[d_in] to its output ``y`` [d_out]; at site ``a{L}`` it maps the attention layer's output to
itself (an attention-output SAE: for attention-only models, where MLP transcoders have nothing
to learn). Features ``f = act(x W_enc + b_enc)``, output ``ŷ = f W_dec + b_dec (+ x W_skip^T)``.
``act`` is ``relu`` (trained with an L1 penalty weighted by decoder norms), ``topk`` (the k
largest pre-activations, ReLU'd) or ``jumprelu`` (``z · [z > threshold]``, thresholds learned
with a straight-through estimator, Rajamanoharan et al. 2024). For every active feature the
activation equals its pre-activation, which is what makes attribution graphs complete.

Layout (one directory per site, ``{dir}/{site}/``), the names circuit-tracer and SAELens share:
``weights.safetensors`` with ``W_enc`` [d_in, d_sae], ``b_enc`` [d_sae], ``W_dec`` [d_sae, d_out],
``b_dec`` [d_out], optionally ``threshold`` [d_sae] (JumpReLU, Gemma Scope's name) and ``W_skip``
[d_out, d_in] (circuit-tracer's orientation: applied as ``x @ W_skip.T``); and ``cfg.json``
(``d_in``, ``d_sae``, ``d_out``, ``activation_fn``, ``k``, ``site``, ``layer``,
``hook_name_in``, ``hook_name_out``, ``model_name``, training metrics). ``manifest.json`` at the
top lists the sites.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from circuitfind.errors import InputError

__all__ = [
    "ACTIVATIONS",
    "Transcoder",
    "TranscoderConfig",
    "TranscoderSet",
    "on_device",
    "parse_site",
    "site_hooks",
]

ACTIVATIONS = ("relu", "topk", "jumprelu")


def parse_site(site: str) -> tuple[str, int]:
    """``"m3"`` -> ("mlp", 3); ``"a0"`` -> ("attn", 0). Accepts ``mlp3``/``attn0`` too."""
    s = site.strip().lower()
    for prefix, kind in (("mlp", "mlp"), ("attn", "attn"), ("m", "mlp"), ("a", "attn")):
        if s.startswith(prefix) and s[len(prefix) :].lstrip(".").isdigit():
            return kind, int(s[len(prefix) :].lstrip("."))
    raise InputError(f"unknown transcoder site {site!r}; use m{{L}} (MLP) or a{{L}} (attention)")


def site_hooks(site: str) -> tuple[str, str]:
    """(input hook name, output hook name) documented in ``cfg.json``."""
    kind, layer = parse_site(site)
    if kind == "mlp":
        return f"mlp_in.{layer}", f"mlp_out.{layer}"
    return f"attn_out.{layer}", f"attn_out.{layer}"


@dataclass
class TranscoderConfig:
    """A transcoder's shape and training choices (``cfg.json``)."""

    d_in: int
    d_sae: int
    d_out: int
    site: str
    activation_fn: str = "topk"
    k: int = 8
    l1_coefficient: float = 3e-4  # relu
    l0_coefficient: float = 1e-3  # jumprelu
    init_threshold: float = 0.05  # jumprelu
    bandwidth: float = 0.05  # jumprelu's straight-through kernel width
    skip: bool = False
    model_name: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.activation_fn not in ACTIVATIONS:
            raise InputError(
                f"unknown activation {self.activation_fn!r}; choose from {', '.join(ACTIVATIONS)}"
            )
        parse_site(self.site)

    @property
    def layer(self) -> int:
        return parse_site(self.site)[1]

    @property
    def kind(self) -> str:
        return parse_site(self.site)[0]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        hook_in, hook_out = site_hooks(self.site)
        d.update(layer=self.layer, hook_name_in=hook_in, hook_name_out=hook_out)
        d["activation_fn_kwargs"] = {"k": self.k} if self.activation_fn == "topk" else {}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TranscoderConfig:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


class _JumpStep(torch.autograd.Function):
    """Heaviside step H(z - θ); pseudo-gradient in θ by a rectangle kernel of width ε."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> Any:
        (g,) = grads
        z, theta = ctx.saved_tensors
        kernel = ((z - theta).abs() < ctx.eps / 2).to(z.dtype) / ctx.eps
        return None, (-g * kernel).sum_to_size(theta.shape), None


class Transcoder(nn.Module):
    """One site's transcoder (see the module docstring)."""

    def __init__(self, cfg: TranscoderConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(cfg.d_sae, cfg.d_in, generator=gen) / cfg.d_in**0.5
        self.W_enc = nn.Parameter(w.T.contiguous())  # [d_in, d_sae]
        dec = torch.randn(cfg.d_sae, cfg.d_out, generator=gen)
        self.W_dec = nn.Parameter(dec / dec.norm(dim=-1, keepdim=True) * 0.1)  # [d_sae, d_out]
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out))
        self.threshold: nn.Parameter | None = None
        if cfg.activation_fn == "jumprelu":
            self.threshold = nn.Parameter(torch.full((cfg.d_sae,), cfg.init_threshold))
        self.W_skip: nn.Parameter | None = None
        if cfg.skip:
            self.W_skip = nn.Parameter(torch.zeros(cfg.d_out, cfg.d_in))  # applied as x W_skip^T

    def preact(self, x: Tensor) -> Tensor:
        """Pre-activations ``x W_enc + b_enc``: [..., d_in] -> [..., d_sae]."""
        return x.to(self.W_enc.dtype) @ self.W_enc + self.b_enc

    def activate(self, pre: Tensor) -> Tensor:
        """The activation function on pre-activations (active features keep their value)."""
        if self.cfg.activation_fn == "topk":
            k = min(self.cfg.k, self.cfg.d_sae)
            top = pre.topk(k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, top.indices, F.relu(top.values))
        if self.cfg.activation_fn == "jumprelu":
            assert self.threshold is not None
            theta = self.threshold.to(pre.dtype)
            if self.training:
                return pre * _JumpStep.apply(pre, theta, self.cfg.bandwidth)
            return pre * (pre > theta).to(pre.dtype)
        return F.relu(pre)

    def encode(self, x: Tensor) -> Tensor:
        """Feature activations [..., d_sae]."""
        return self.activate(self.preact(x))

    def skip(self, x: Tensor) -> Tensor:
        """The skip connection's output ``x W_skip^T`` (zeros without one)."""
        if self.W_skip is None:
            return torch.zeros(*x.shape[:-1], self.cfg.d_out, dtype=x.dtype, device=x.device)
        return x.to(self.W_skip.dtype) @ self.W_skip.T

    def decode(self, f: Tensor, x: Tensor | None = None) -> Tensor:
        """Output from features (plus the skip path of input ``x`` when there is one)."""
        out = f @ self.W_dec + self.b_dec
        if self.W_skip is not None and x is not None:
            out = out + self.skip(x)
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x), x)

    def sparsity_loss(self, f: Tensor, pre: Tensor) -> Tensor:
        """The activation's sparsity penalty on a batch (0 for TopK)."""
        if self.cfg.activation_fn == "relu":
            return self.cfg.l1_coefficient * (f * self.W_dec.norm(dim=-1)).sum(-1).mean()
        if self.cfg.activation_fn == "jumprelu":
            assert self.threshold is not None
            step = _JumpStep.apply(pre, self.threshold, self.cfg.bandwidth)
            return self.cfg.l0_coefficient * step.sum(-1).mean()
        return torch.zeros((), device=f.device)

    def save(self, path: str | Path) -> Path:
        """Write ``weights.safetensors`` and ``cfg.json`` into ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(path / "weights.safetensors"))
        (path / "cfg.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Transcoder:
        """Load a transcoder written by ``save`` (safetensors only; nothing is unpickled)."""
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "weights.safetensors").is_file() or not (path / "cfg.json").is_file():
            raise InputError(
                f"{path} is not a transcoder directory (needs weights.safetensors and cfg.json)"
            )
        cfg = TranscoderConfig.from_dict(json.loads((path / "cfg.json").read_text()))
        tc = cls(cfg)
        state = load_file(str(path / "weights.safetensors"))
        missing = {"W_enc", "b_enc", "W_dec", "b_dec"} - set(state)
        if missing:
            raise InputError(f"{path / 'weights.safetensors'} lacks {sorted(missing)}")
        tc.load_state_dict(state)
        return tc.eval()


def on_device(
    transcoders: dict[str, Transcoder], device: torch.device, dtype: torch.dtype | None = None
) -> dict[str, Transcoder]:
    """The transcoders on ``device`` (and in ``dtype`` when given), in eval mode with gradients
    off: the same objects where they are already there, copies otherwise (so a set loaded on the
    CPU is not moved under its owner)."""
    import copy

    out: dict[str, Transcoder] = {}
    for site, tc in transcoders.items():
        w = tc.W_enc
        if w.device != torch.device(device) or (dtype is not None and w.dtype != dtype):
            tc = copy.deepcopy(tc).to(device=device, dtype=dtype or w.dtype)
        out[site] = tc.eval().requires_grad_(False)
    return out


class TranscoderSet(dict[str, Transcoder]):
    """Transcoders by site name (``m{L}``, ``a{L}``), saved together with a manifest."""

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for site, tc in self.items():
            tc.save(path / site)
        manifest = {"format": "circuitfind-transcoders/1", "sites": sorted(self)}
        (path / "manifest.json").write_text(json.dumps(manifest, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> TranscoderSet:
        path = Path(path)
        manifest = path / "manifest.json"
        if not manifest.is_file():
            raise InputError(
                f"{path} has no manifest.json; point at a directory written by "
                "circuitfind.features.train_transcoders (or `circuitfind features train`)"
            )
        sites = json.loads(manifest.read_text())["sites"]
        return cls({s: Transcoder.load(path / s) for s in sites})

    def sorted_sites(self) -> list[str]:
        """Sites in the order the forward pass reaches them (a{L} before m{L})."""
        return sorted(self, key=lambda s: (parse_site(s)[1], parse_site(s)[0] == "mlp"))
