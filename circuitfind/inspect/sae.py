"""Sparse autoencoders (ReLU + L1 and TopK) on any site's activations, in SAELens's layout.

An SAE maps an activation ``x`` [d_in] to sparse features ``f = act((x − b_dec) W_enc + b_enc)``
[d_sae] and back, ``x̂ = f W_dec + b_dec``. ``standard``: ReLU with an L1 penalty weighted by the
decoder norms (Anthropic's April 2024 recipe); ``topk``: keep the k largest pre-activations
(Gao et al. 2024), decoder rows kept at unit norm. Saved as ``sae_weights.safetensors``
(``W_enc`` [d_in, d_sae], ``b_enc``, ``W_dec`` [d_sae, d_in], ``b_dec``) and ``cfg.json``, the
layout SAELens reads and writes.

Sites: hook points (``resid_pre.{L}``, ``resid_mid.{L}``, ``attn_out.{L}``, ``mlp_out.{L}``,
``resid_final``) or nodes (``input``, ``m{L}``, ``a{L}.h{H}``).

An SAE is trained and evaluated on the data the model is evaluated on (``evaluation_data``: a
task's prompts, a zoo model's training generator, or given texts), since splicing metrics on
data the model does badly on say nothing. ``splice_metrics``'s ``loss_recovered`` is SAELens's
``(loss_zero - loss_spliced) / (loss_zero - loss_clean)``, undefined (None, with the reason)
when zero-ablating the site does not raise the loss.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
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
    "EvalData",
    "SAEConfig",
    "evaluate_sae",
    "evaluation_data",
    "feature_logit_effect",
    "format_metrics",
    "loss_recovered",
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
        # set by train_sae: steps, seconds, seconds_per_step
        self.train_stats: dict[str, float] = {}

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
    bar = tqdm(range(steps), disable=not progress, desc=f"SAE ({cfg.architecture})", unit="step")
    x = first
    start = time.perf_counter()
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
        if step % 10 == 0 or step == steps - 1:
            per_step = (time.perf_counter() - start) / (step + 1)
            bar.set_postfix(loss=f"{loss.item():.4g}", s_per_step=f"{per_step:.3g}")
    seconds = time.perf_counter() - start
    sae.train_stats = {
        "train_steps": steps,
        "train_seconds": seconds,
        "seconds_per_step": seconds / max(1, steps),
    }
    logger.info(
        "SAE trained: %d steps in %.1f s (%.3g s a step)", steps, seconds, seconds / max(1, steps)
    )
    return sae.eval()


def evaluate_sae(sae: SAE, activations: Tensor) -> dict[str, float]:
    """MSE, explained variance, mean L0 and dead-feature fraction on activations [n, d_in]; and
    the training's steps, seconds and seconds a step when ``train_sae`` trained it."""
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
        **sae.train_stats,
    }


# ----------------------------------------------------------------------------- on a model
def _site(model: Model, site: str) -> tuple[str, int | None]:
    """(hook point, head or None) for a site name."""
    from circuitfind.names import parse_node

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


@dataclass(frozen=True)
class EvalData:
    """The tokens an SAE is trained and evaluated on, and which next-token losses count."""

    tokens: Tensor  # [n, T]
    attention_mask: Tensor | None  # [n, T], 1 = real token; None: all real
    loss_weight: Tensor | None  # [n, T-1], weight of predicting tokens[:, i + 1]; None: 1 each
    source: str  # where they come from, for reports


def evaluation_data(
    model: Model,
    *,
    task: Any = None,
    texts: Sequence[str] | None = None,
    n: int = 256,
    seed: int = 0,
    allow_random: bool = False,
) -> EvalData:
    """The data ``model`` is evaluated on, to train and evaluate an SAE on.

    ``texts``: those texts (every next token counts). ``task`` (a ``Task`` or a task name):
    its clean prompts (every next token counts). Neither, on a zoo model: ``n`` sequences of the
    generator it was trained on, with the training loss's weights (the positions the model is
    trained to predict). Anything else raises ``InputError`` — or, with ``allow_random``, gives
    ``n`` random sequences of 32 tokens with a warning: on random tokens a model does badly,
    zero-ablating a site can lower the loss, and ``loss_recovered`` then means nothing.
    """
    if texts is not None:
        ids, mask = as_tokens(model, list(texts))
        return EvalData(ids, mask, None, f"{ids.shape[0]} given texts")
    if task is not None:
        if isinstance(task, str):
            from circuitfind.tasks import get_task

            task = get_task(task, model, n=n, seed=seed)
        return EvalData(
            task.clean,
            task.attention_mask,
            None,
            f"task {task.name}: its {len(task)} clean prompts",
        )
    name = model.cfg.name
    if name.startswith("zoo:"):
        from circuitfind.zoo.recipe import get_recipe

        recipe = get_recipe(name.removeprefix("zoo:"))
        sample = recipe.sampler(model.tokenizer)
        tokens, weight = sample(torch.Generator().manual_seed(seed), n)
        return EvalData(
            tokens,
            None,
            weight,
            f"{name}'s training generator: {n} sequences (seed {seed}), training-loss weights",
        )
    if allow_random:
        logger.warning(
            "SAE on random tokens: not data %s is evaluated on (give a task or texts)",
            name or "the model",
        )
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, model.cfg.d_vocab, (n, 32), generator=gen)
        return EvalData(ids, None, None, f"{n} random sequences (no task or texts given)")
    raise InputError(
        f"no evaluation data for {name or 'this model'}: give texts (--data FILE) or a task "
        "(--task NAME); the zoo models default to their training generator"
    )


def _position_weights(ids: Tensor, mask: Tensor | None, loss_weight: Tensor | None) -> Tensor:
    """[n, T-1] weight of each next-token loss (0 where either token is padding)."""
    real = (mask[:, 1:] * mask[:, :-1]).float() if mask is not None else None
    if loss_weight is not None:
        w = loss_weight.float().to(ids.device)
        return w * real if real is not None else w
    return (
        real if real is not None else torch.ones(ids.shape[0], ids.shape[1] - 1, device=ids.device)
    )


def splice_metrics(
    model: Model,
    sae: SAE,
    tokens: TokensLike,
    site: str,
    *,
    attention_mask: Tensor | None = None,
    loss_weight: Tensor | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, Any]:
    """Next-token loss with the SAE's reconstruction spliced in at ``site``.

    Returns ``loss_clean``, ``loss_spliced``, ``loss_zero`` (the site zero-ablated): the mean
    next-token loss weighted by ``loss_weight`` [n, T-1] (default: 1 on every real token);
    ``kl`` (clean ‖ spliced, nats per token); ``loss_recovered``, SAELens's
    ``(loss_zero − loss_spliced) / (loss_zero − loss_clean)`` (1 = the SAE loses nothing, 0 = as
    bad as zero-ablating), or None when zero-ablation does not raise the loss, with
    ``loss_recovered_note`` saying why (else ""); ``splice_seconds`` and ``seconds_per_batch``.
    """
    ids, mask = as_tokens(model, tokens, attention_mask)
    point, head = _site(model, site)
    sae = sae.to(model.device)
    weights = _position_weights(ids, mask, loss_weight)  # [n, T-1]

    def swap(fn_head: Any, b_ids: Tensor, b_mask: Tensor | None) -> dict[str, Any]:
        if head is None:
            return {point: lambda x: fn_head(x.float()).to(x.dtype)}
        layer = int(point.split(".")[1])
        with torch.no_grad():
            _, cache = model.run_with_cache(b_ids, b_mask)
        h_out = cache.heads[layer][:, :, head]
        return {point: lambda x: x - h_out + fn_head(h_out.float()).to(x.dtype)}

    def nll_logp(
        b_ids: Tensor, b_mask: Tensor | None, hooks: dict[str, Any]
    ) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            logits = model(b_ids, b_mask, hooks=hooks).float()
        logp = logits.log_softmax(-1)  # [b, T, vocab]
        return -logp[:, :-1].gather(-1, b_ids[:, 1:, None])[..., 0], logp  # [b, T-1]

    sums = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    kl_sum, kl_count = 0.0, 0
    starts = range(0, ids.shape[0], batch_size)
    bar = tqdm(starts, disable=not progress, desc=f"splice at {site}", unit="batch")
    t0 = time.perf_counter()
    for i, start in enumerate(bar):
        b_ids = ids[start : start + batch_size]
        b_mask = mask[start : start + batch_size] if mask is not None else None
        w = weights[start : start + batch_size].to(b_ids.device)
        nll_clean, lp_clean = nll_logp(b_ids, b_mask, {})
        nll_spliced, lp_spliced = nll_logp(b_ids, b_mask, swap(sae, b_ids, b_mask))
        nll_zero, _ = nll_logp(b_ids, b_mask, swap(torch.zeros_like, b_ids, b_mask))
        for key, nll in (("clean", nll_clean), ("spliced", nll_spliced), ("zero", nll_zero)):
            sums[key] += float((nll.double() * w).sum())
        kl = (lp_clean.exp() * (lp_clean - lp_spliced)).sum(-1)  # [b, T]
        if b_mask is not None:
            kl = kl[b_mask.bool()]
        kl_sum += float(kl.double().sum())
        kl_count += kl.numel()
        bar.set_postfix(s_per_batch=f"{(time.perf_counter() - t0) / (i + 1):.3g}")
    seconds = time.perf_counter() - t0
    total = float(weights.double().sum())
    if total <= 0:
        raise InputError("no next-token loss to measure: every loss weight is 0")
    clean, spliced, zero = (sums[k] / total for k in ("clean", "spliced", "zero"))
    recovered, note = loss_recovered(clean, spliced, zero, site)
    return {
        "loss_clean": clean,
        "loss_spliced": spliced,
        "loss_zero": zero,
        "kl": kl_sum / max(1, kl_count),
        "loss_recovered": recovered,
        "loss_recovered_note": note,
        "splice_seconds": seconds,
        "seconds_per_batch": seconds / max(1, len(starts)),
    }


def loss_recovered(
    clean: float, spliced: float, zero: float, site: str = "the site"
) -> tuple[float | None, str]:
    """SAELens's loss recovered, ``(zero − spliced) / (zero − clean)``, and "" — or None and the
    reason when zero-ablating the site does not raise the loss (the ratio then means nothing)."""
    gap = zero - clean
    if gap <= 1e-6 * max(1.0, abs(clean)):
        return None, (
            f"undefined: zero-ablating {site} does not raise the loss on this data (clean "
            f"{clean:.4f}, zero-ablated {zero:.4f}): the model does not do well on the data, or "
            "it does not use the site"
        )
    return (zero - spliced) / gap, ""


def format_metrics(metrics: dict[str, Any]) -> str:
    """The metrics as aligned ``name: value`` lines (an undefined value shown with its note)."""
    lines = []
    for key, value in metrics.items():
        if key.endswith("_note"):
            continue
        if value is None:
            note = metrics.get(f"{key}_note") or ""
            lines.append(f"{key:>20}: {note or 'undefined'}")
        elif isinstance(value, float):
            lines.append(f"{key:>20}: {value:.4f}")
        else:
            lines.append(f"{key:>20}: {value}")
    return "\n".join(lines)


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
