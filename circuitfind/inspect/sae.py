"""Sparse autoencoders (ReLU + L1 and TopK) on any site's activations, in SAELens's layout.

An SAE maps an activation ``x`` [d_in] to sparse features ``f = act((x − b_dec) W_enc + b_enc)``
[d_sae] and back, ``x̂ = f W_dec + b_dec``. ``standard``: ReLU with an L1 penalty weighted by the
decoder norms (Anthropic's April 2024 recipe); ``topk``: keep the k largest pre-activations
(Gao et al. 2024), decoder rows kept at unit norm. Saved as ``sae_weights.safetensors``
(``W_enc`` [d_in, d_sae], ``b_enc``, ``W_dec`` [d_sae, d_in], ``b_dec``) and ``cfg.json``, the
layout SAELens reads and writes.

Sites: hook points (``resid_pre.{L}``, ``resid_mid.{L}``, ``attn_out.{L}``, ``mlp_out.{L}``,
``resid_final``) or nodes (``input``, ``m{L}``, ``a{L}.h{H}``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from circuitfind.errors import InputError
from circuitfind.inspect._common import TokensLike, as_tokens

if TYPE_CHECKING:
    from circuitfind.model import Model

__all__ = [
    "SAE",
    "SAEConfig",
    "evaluate_sae",
    "feature_logit_effect",
    "site_activations",
    "splice_metrics",
    "top_activations",
    "train_sae",
]

logger = logging.getLogger(__name__)
ARCHITECTURES = ("standard", "topk")


@dataclass
class SAEConfig:
    """An SAE's shape and training choices (serialised into SAELens's ``cfg.json``)."""

    d_in: int
    d_sae: int
    architecture: str = "standard"
    k: int = 8  # topk only
    l1_coefficient: float = 1e-3  # standard only
    hook_name: str = ""
    model_name: str = ""
    dtype: str = "float32"
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise InputError(
                f"unknown SAE architecture {self.architecture!r}; choose from "
                f"{', '.join(ARCHITECTURES)}"
            )

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "extra"}
        out.update(
            activation_fn="topk" if self.architecture == "topk" else "relu",
            activation_fn_kwargs={"k": self.k} if self.architecture == "topk" else {},
            apply_b_dec_to_input=True,
            normalize_activations="none",
            hook_layer=_layer_of(self.hook_name),
            hook_head_index=None,
            context_size=None,
            dataset_path="",
            prepend_bos=False,
        )
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAEConfig:
        arch = d.get("architecture", "standard")
        if arch not in ARCHITECTURES:
            raise InputError(
                f"SAE architecture {arch!r} is not supported here; supported: "
                f"{', '.join(ARCHITECTURES)}"
            )
        kwargs = d.get("activation_fn_kwargs") or {}
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        return cls(
            d_in=int(d["d_in"]),
            d_sae=int(d["d_sae"]),
            architecture=arch,
            k=int(kwargs.get("k", d.get("k", 8))),
            l1_coefficient=float(d.get("l1_coefficient", 1e-3)),
            hook_name=str(d.get("hook_name", "")),
            model_name=str(d.get("model_name", "")),
            dtype=str(d.get("dtype", "float32")),
            device=str(d.get("device", "cpu")),
            extra={k: v for k, v in d.items() if k not in known and k != "activation_fn_kwargs"},
        )


def _layer_of(hook_name: str) -> int | None:
    import re

    m = re.search(r"(\d+)", hook_name)
    return int(m.group(1)) if m else None


class SAE(nn.Module):
    """A sparse autoencoder (see the module docstring)."""

    def __init__(self, cfg: SAEConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(seed)
        w_dec = torch.randn(cfg.d_sae, cfg.d_in, generator=gen)
        w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True) * 0.1
        self.W_dec = nn.Parameter(w_dec)  # [d_sae, d_in]
        self.W_enc = nn.Parameter(w_dec.T.clone())  # [d_in, d_sae]
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))

    def encode(self, x: Tensor) -> Tensor:
        """[..., d_in] -> features [..., d_sae]"""
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        if self.cfg.architecture == "topk":
            k = min(self.cfg.k, self.cfg.d_sae)
            top = pre.topk(k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, top.indices, F.relu(top.values))
        return F.relu(pre)

    def decode(self, f: Tensor) -> Tensor:
        return f @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def loss(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(total loss, features) on a batch [n, d_in]."""
        f = self.encode(x)
        mse = (self.decode(f) - x).pow(2).sum(-1).mean()
        if self.cfg.architecture == "topk":
            return mse, f
        sparsity = (f * self.W_dec.norm(dim=-1)).sum(-1).mean()
        return mse + self.cfg.l1_coefficient * sparsity, f

    def save(self, path: str | Path) -> Path:
        """Write ``sae_weights.safetensors`` and ``cfg.json`` (SAELens layout) into ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(path / "sae_weights.safetensors"))
        (path / "cfg.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device | None = None) -> SAE:
        """Load an SAE saved by ``save`` or by SAELens (standard and topk architectures)."""
        from safetensors.torch import load_file

        path = Path(path)
        weights, cfg_file = path / "sae_weights.safetensors", path / "cfg.json"
        if not weights.is_file() or not cfg_file.is_file():
            raise InputError(
                f"{path} is not an SAE directory (needs sae_weights.safetensors and cfg.json)"
            )
        cfg = SAEConfig.from_dict(json.loads(cfg_file.read_text()))
        sae = cls(cfg)
        state = load_file(str(weights))
        missing = {"W_enc", "b_enc", "W_dec", "b_dec"} - set(state)
        if missing:
            raise InputError(f"{weights} lacks {sorted(missing)}")
        sae.load_state_dict({k: state[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")})
        return sae.to(device) if device is not None else sae


def train_sae(
    activations: Tensor | Iterable[Tensor],
    cfg: SAEConfig,
    *,
    steps: int = 2000,
    batch_size: int = 1024,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
) -> SAE:
    """Train an SAE on activations [n, d_in] (sampled in batches) or a stream of batches.

    A stream is cycled until ``steps`` batches are seen. ``b_dec`` starts at the mean
    activation of the first batch; TopK decoder rows are renormalised after each step.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if isinstance(activations, Tensor):
        data = activations.reshape(-1, activations.shape[-1]).float()

        def batches() -> Iterator[Tensor]:
            while True:
                yield data[torch.randint(0, data.shape[0], (batch_size,), generator=gen)]

        stream = batches()
    else:
        cached = list(activations)
        if not cached:
            raise InputError("no activations to train the SAE on")
        stream = (cached[i % len(cached)].reshape(-1, cfg.d_in).float() for i in range(steps))
    sae = SAE(cfg, seed=seed)
    first = next(stream)
    if first.shape[-1] != cfg.d_in:
        raise InputError(f"activations have width {first.shape[-1]}; the SAE's d_in is {cfg.d_in}")
    with torch.no_grad():
        sae.b_dec.copy_(first.mean(0))
    sae = sae.to(first.device)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    bar = tqdm(range(steps), disable=not progress, desc=f"SAE ({cfg.architecture})")
    x = first
    for step in bar:
        if step > 0:
            x = next(stream)
        loss, _ = sae.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if cfg.architecture == "topk":
            with torch.no_grad():
                sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True).clamp(min=1e-8))
        if step % 100 == 0:
            bar.set_postfix(loss=loss.item())
    return sae.eval()


def evaluate_sae(sae: SAE, activations: Tensor) -> dict[str, float]:
    """MSE, explained variance, mean L0 and dead-feature fraction on activations [n, d_in]."""
    x = activations.reshape(-1, sae.cfg.d_in).float()
    with torch.no_grad():
        f = sae.encode(x)
        recon = sae.decode(f)
    resid = (x - recon).pow(2).sum()
    total = (x - x.mean(0)).pow(2).sum().clamp(min=1e-12)
    return {
        "mse": float((x - recon).pow(2).mean()),
        "explained_variance": float(1 - resid / total),
        "l0": float((f > 0).float().sum(-1).mean()),
        "dead_fraction": float(((f > 0).sum(0) == 0).float().mean()),
    }


# ----------------------------------------------------------------------------- on a model
def _site(model: Model, site: str) -> tuple[str, int | None]:
    """(hook point, head or None) for a site name."""
    from circuitfind.graph import parse_node

    if site in model.hook_points():
        return site, None
    node = parse_node(site, model.cfg)
    if node == "input":
        return "embed", None
    if node.startswith("m"):
        return f"mlp_out.{node[1:]}", None
    if node == "logits":
        raise InputError("'logits' is not a site; use resid_final")
    layer, head = node[1:].split(".h")
    return f"attn_out.{layer}", int(head)


def site_activations(
    model: Model,
    tokens: TokensLike,
    site: str,
    *,
    attention_mask: Tensor | None = None,
    batch_size: int = 32,
) -> Iterator[Tensor]:
    """Stream the activations at ``site`` over every real token, batch by batch: [n, d_model]."""
    ids, mask = as_tokens(model, tokens, attention_mask)
    point, head = _site(model, site)
    for start in range(0, ids.shape[0], batch_size):
        b_ids = ids[start : start + batch_size]
        b_mask = mask[start : start + batch_size] if mask is not None else None
        with torch.no_grad():
            if head is not None:
                _, cache = model.run_with_cache(b_ids, b_mask)
                act = cache.heads[int(point.split(".")[1])][:, :, head]
            else:
                seen: list[Tensor] = []

                def grab(x: Tensor, out: list[Tensor] = seen) -> Tensor:
                    out.append(x)
                    return x

                model(b_ids, b_mask, hooks={point: grab})
                act = seen[0]
        real = b_mask.bool() if b_mask is not None else torch.ones_like(b_ids, dtype=torch.bool)
        yield act[real].float()


def splice_metrics(
    model: Model, sae: SAE, tokens: TokensLike, site: str, *, attention_mask: Tensor | None = None
) -> dict[str, float]:
    """Next-token loss with the SAE's reconstruction spliced in at ``site``.

    Returns ``loss_clean``, ``loss_spliced``, ``loss_zero`` (the site zero-ablated),
    ``kl`` (clean ‖ spliced, nats per token) and ``loss_recovered``
    ((zero − spliced) / (zero − clean); 1 = the SAE loses nothing).
    """
    ids, mask = as_tokens(model, tokens, attention_mask)
    point, head = _site(model, site)
    sae = sae.to(model.device)

    def swap(fn_head: Any) -> dict[str, Any]:
        if head is None:
            return {point: lambda x: fn_head(x.float()).to(x.dtype)}
        layer = int(point.split(".")[1])
        with torch.no_grad():
            _, cache = model.run_with_cache(ids, mask)
        h_out = cache.heads[layer][:, :, head]
        return {point: lambda x: x - h_out + fn_head(h_out.float()).to(x.dtype)}

    def loss_and_logp(hooks: dict[str, Any]) -> tuple[float, Tensor]:
        with torch.no_grad():
            logits = model(ids, mask, hooks=hooks).float()
        logp = logits.log_softmax(-1)
        nll = -logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
        weight = (mask[:, 1:] * mask[:, :-1]).float() if mask is not None else torch.ones_like(nll)
        return float((nll * weight).sum() / weight.sum()), logp

    clean, lp_clean = loss_and_logp({})
    spliced, lp_spliced = loss_and_logp(swap(sae))
    zero, _ = loss_and_logp(swap(torch.zeros_like))
    kl = (lp_clean.exp() * (lp_clean - lp_spliced)).sum(-1)
    if mask is not None:
        kl = kl[mask.bool()]
    gap = zero - clean
    return {
        "loss_clean": clean,
        "loss_spliced": spliced,
        "loss_zero": zero,
        "kl": float(kl.mean()),
        "loss_recovered": float((zero - spliced) / gap) if abs(gap) > 1e-9 else float("nan"),
    }


def top_activations(
    model: Model,
    sae: SAE,
    tokens: TokensLike,
    site: str,
    feature: int,
    *,
    k: int = 10,
    context: int = 5,
    attention_mask: Tensor | None = None,
) -> list[dict[str, Any]]:
    """The ``k`` token positions where ``feature`` fires most, with their left context."""
    ids, mask = as_tokens(model, tokens, attention_mask)
    acts = torch.cat(list(site_activations(model, ids, site, attention_mask=mask)))
    with torch.no_grad():
        values = sae.to(acts.device).encode(acts)[:, feature]
    real = (mask.bool() if mask is not None else torch.ones_like(ids, dtype=torch.bool)).nonzero()
    top = values.topk(min(k, values.numel()))
    out = []
    for value, flat in zip(top.values.tolist(), top.indices.tolist()):
        b, p = (int(i) for i in real[flat])
        window = ids[b, max(0, p - context) : p + 1].tolist()
        text = model.tokenizer.decode(window) if model.tokenizer is not None else window
        out.append({"batch": b, "pos": p, "activation": value, "context": text})
    return out


def feature_logit_effect(model: Model, sae: SAE, feature: int, *, k: int = 10) -> dict[str, Any]:
    """The tokens a feature's decoder direction promotes and suppresses directly.

    ``W_dec[feature] * w_lnf @ W_U`` (final norm's scale ignored): meaningful for sites that
    write to the residual stream.
    """
    with torch.no_grad():
        d = sae.W_dec[feature].to(model.device, torch.float32)
        effect = (d * model.w.lnf_w.float()) @ model.w.W_U.float()  # [vocab]

    def name(i: int) -> str | int:
        return model.tokenizer.decode([i]) if model.tokenizer is not None else i

    up, down = effect.topk(k), (-effect).topk(k)
    return {
        "promoted": [(name(i), float(v)) for v, i in zip(up.values, up.indices.tolist())],
        "suppressed": [(name(i), -float(v)) for v, i in zip(down.values, down.indices.tolist())],
    }
