"""Training transcoders on a model's own data, and the replacement model's metrics.

``train_transcoders(model, data)`` collects every chosen site's (input, output) pairs over the
real tokens of ``data`` (an ``EvalData``, token ids, or None: the data ``evaluation_data`` picks,
e.g. a zoo model's own training generator), trains one transcoder per site on
``‖ŷ − y‖² / mean ‖y − ȳ‖²`` (normalised MSE) plus the activation's sparsity penalty, and
measures each one and the whole replacement model (``replacement_metrics``).

Sites: ``"mlp"`` (every ``m{L}``), ``"attn"`` (every ``a{L}``, attention-output SAEs), ``"auto"``
(MLPs, or attention where a model's MLPs write nothing, as in the attention-only zoo model), or
a list of site names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitfind.errors import InputError
from circuitfind.features.transcoder import Transcoder, TranscoderConfig, TranscoderSet
from circuitfind.inspect.sae import EvalData, _position_weights, evaluation_data
from circuitfind.model import Model

__all__ = ["replacement_metrics", "site_pairs", "spliced_hooks", "train_transcoders"]

logger = logging.getLogger(__name__)


def _as_data(model: Model, data: Any, n: int, seed: int) -> EvalData:
    if data is None:
        return evaluation_data(model, n=n, seed=seed)
    if isinstance(data, EvalData):
        return data
    ids = torch.as_tensor(data, dtype=torch.long)
    if ids.dim() != 2:
        raise InputError(f"data must be token ids [n, T] or an EvalData; got {tuple(ids.shape)}")
    return EvalData(ids, None, None, f"{ids.shape[0]} given sequences")


def token_weights(data: EvalData) -> Tensor:
    """[N] weight of each real token of ``data``: its next-token loss weight (the last
    position, which predicts nothing, gets the mean weight), 1 each without weights."""
    ids = data.tokens
    real = (
        data.attention_mask.bool()
        if data.attention_mask is not None
        else torch.ones_like(ids, dtype=torch.bool)
    )
    if data.loss_weight is None:
        return torch.ones(int(real.sum()))
    w = data.loss_weight.float()
    w = torch.cat([w, w.mean(1, keepdim=True)], dim=1)
    return w[real]


def site_pairs(
    model: Model, data: EvalData, sites: Sequence[str], batch_size: int = 64
) -> dict[str, tuple[Tensor, Tensor]]:
    """(inputs [N, d_in], outputs [N, d_out]) of each site over the real tokens of ``data``."""
    ins: dict[str, list[Tensor]] = {s: [] for s in sites}
    outs: dict[str, list[Tensor]] = {s: [] for s in sites}
    cfg = model.cfg
    for start in range(0, data.tokens.shape[0], batch_size):
        ids = data.tokens[start : start + batch_size]
        mask = (
            None if data.attention_mask is None else data.attention_mask[start : start + batch_size]
        )
        with torch.no_grad():
            cache = model.cache(ids, mask)
        real = mask.bool() if mask is not None else torch.ones_like(ids, dtype=torch.bool)
        for s in sites:
            layer = int(s[1:])
            if s.startswith("a"):
                bias = model.attn_bias(layer)
                y = cache.heads[layer].sum(2)
                y = y + bias if bias is not None else y
                x = y
            else:
                lw = model.w.layers[layer]
                read = cache.resid_pre[layer] if cfg.parallel_attn_mlp else cache.resid_mid[layer]
                x = model.norm(read, lw.ln2_w, lw.ln2_b, lw.ln2_eps)
                y = cache.mlps[layer]
            ins[s].append(x[real].float())
            outs[s].append(y[real].float())
    return {s: (torch.cat(ins[s]), torch.cat(outs[s])) for s in sites}


def _choose_sites(model: Model, sites: str | Sequence[str], data: EvalData) -> list[str]:
    n = model.cfg.n_layers
    if isinstance(sites, str) and sites in ("mlp", "attn", "auto"):
        if sites == "auto":
            probe = EvalData(data.tokens[:8], None, None, "probe")
            pairs = site_pairs(model, probe, [f"m{i}" for i in range(n)])
            empty = all(float(y.abs().max()) == 0.0 for _, y in pairs.values())
            sites = "attn" if empty else "mlp"
        prefix = "a" if sites == "attn" else "m"
        return [f"{prefix}{i}" for i in range(n)]
    names = [sites] if isinstance(sites, str) else list(sites)
    for s in names:
        if s[:1] not in ("a", "m") or not s[1:].isdigit() or int(s[1:]) >= n:
            raise InputError(f"unknown site {s!r}; sites are a0..a{n - 1} and m0..m{n - 1}")
    return names


def _train_one(
    x: Tensor,
    y: Tensor,
    cfg: TranscoderConfig,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    weights: Tensor | None = None,
) -> Transcoder:
    tc = Transcoder(cfg, seed=seed).to(x.device)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        tc.b_dec.copy_(y.mean(0))
    scale = (y - y.mean(0)).pow(2).sum(-1).mean().clamp(min=1e-12)
    opt = torch.optim.Adam(tc.parameters(), lr=lr)
    tc.train()
    for _ in range(steps):
        if weights is None:
            i = torch.randint(0, x.shape[0], (batch_size,), generator=gen)
        else:  # tokens drawn in proportion to their loss weight: where the model is judged
            i = torch.multinomial(weights, batch_size, replacement=True, generator=gen)
        xb, yb = x[i], y[i]
        pre = tc.preact(xb)
        f = tc.activate(pre)
        mse = (tc.decode(f, xb) - yb).pow(2).sum(-1).mean() / scale
        loss = mse + tc.sparsity_loss(f, pre)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if cfg.activation_fn == "topk":
            with torch.no_grad():
                tc.W_dec.div_(tc.W_dec.norm(dim=-1, keepdim=True).clamp(min=1e-8))
    return tc.eval()


def site_metrics(tc: Transcoder, x: Tensor, y: Tensor, dense: float = 0.1) -> dict[str, float]:
    """Normalised MSE, explained variance, L0, dead and dense fractions on pairs (x, y)."""
    with torch.no_grad():
        f = tc.encode(x)
        err = (tc.decode(f, x) - y).pow(2).sum(-1)
    var = (y - y.mean(0)).pow(2).sum(-1).mean().clamp(min=1e-12)
    freq = (f > 0).float().mean(0)
    return {
        "nmse": float(err.mean() / var),
        "explained_variance": float(1 - err.mean() / var),
        "l0": float((f > 0).float().sum(-1).mean()),
        "dead_fraction": float((freq == 0).float().mean()),
        "dense_fraction": float((freq > dense).float().mean()),
        "dense_threshold": dense,
        "n_tokens": int(x.shape[0]),
    }


def spliced_hooks(
    model: Model,
    transcoders: dict[str, Transcoder],
    *,
    errors: dict[str, Tensor] | None = None,
    edit: Any = None,
    record: dict[str, tuple[Tensor, Tensor]] | None = None,
) -> dict[str, Any]:
    """Hooks for ``model.forward`` that replace each site's output by its transcoder's.

    ``errors[site]`` [batch, pos, d] is added to the site's output (the real run's error keeps
    the output exact); ``edit(site, acts) -> acts`` may change the feature activations;
    ``record[site]`` receives the site's transcoder input and the real output it replaces
    ``(x, y)``, both as computed in the run (in its autograd graph).
    """
    hooks: dict[str, Any] = {}
    reads: dict[int, Tensor] = {}
    cfg = model.cfg
    for site, tc in transcoders.items():
        layer = int(site[1:])

        def out_fn(y: Tensor, site: str = site, tc: Transcoder = tc, layer: int = layer) -> Tensor:
            if site.startswith("a"):
                x = y
            else:
                lw = model.w.layers[layer]
                x = model.norm(reads[layer], lw.ln2_w, lw.ln2_b, lw.ln2_eps)
            if record is not None:
                record[site] = (x, y)
            acts = tc.encode(x)
            if edit is not None:
                acts = edit(site, acts)
            out = tc.decode(acts, x).to(y.dtype)
            if errors is not None and site in errors:
                out = out + errors[site].to(y.dtype)
            return out

        if site.startswith("m"):
            point = f"resid_pre.{layer}" if cfg.parallel_attn_mlp else f"resid_mid.{layer}"

            def grab(x: Tensor, layer: int = layer) -> Tensor:
                reads[layer] = x
                return x

            hooks[point] = grab
            hooks[f"mlp_out.{layer}"] = out_fn
        else:
            hooks[f"attn_out.{layer}"] = out_fn
    return hooks


def replacement_metrics(
    model: Model, transcoders: dict[str, Transcoder], data: EvalData, batch_size: int = 64
) -> dict[str, float]:
    """The replacement model (every site's transcoder spliced in, no error terms) against the
    original on ``data``: mean KL(original ‖ replacement) per next-token prediction, both
    next-token losses (weighted by ``data``'s loss weights), and their difference."""
    kl_sum = ce_orig = ce_rep = weight = 0.0
    hooks = spliced_hooks(model, transcoders)
    for start in range(0, data.tokens.shape[0], batch_size):
        ids = data.tokens[start : start + batch_size]
        mask = (
            None if data.attention_mask is None else data.attention_mask[start : start + batch_size]
        )
        lw = None if data.loss_weight is None else data.loss_weight[start : start + batch_size]
        ids = ids.to(model.device)
        mask = None if mask is None else mask.to(model.device)
        w = _position_weights(ids, mask, lw).float()
        with torch.no_grad():
            lo = model(ids, mask).float().log_softmax(-1)[:, :-1]
            lr = model(ids, mask, hooks=hooks).float().log_softmax(-1)[:, :-1]
        nxt = ids[:, 1:].unsqueeze(-1)
        kl = (lo.exp() * (lo - lr)).sum(-1)
        kl_sum += float((kl * w).sum())
        ce_orig += float((-lo.gather(-1, nxt)[..., 0] * w).sum())
        ce_rep += float((-lr.gather(-1, nxt)[..., 0] * w).sum())
        weight += float(w.sum())
    weight = max(weight, 1e-12)
    return {
        "kl": kl_sum / weight,
        "loss_original": ce_orig / weight,
        "loss_replacement": ce_rep / weight,
        "loss_increase": (ce_rep - ce_orig) / weight,
    }


def train_transcoders(
    model: Model,
    data: Any = None,
    *,
    sites: str | Sequence[str] = "auto",
    d_sae: int | None = None,
    activation: str = "topk",
    k: int = 8,
    skip: bool = False,
    steps: int = 1000,
    batch_size: int = 512,
    lr: float = 3e-3,
    l1_coefficient: float = 3e-4,
    l0_coefficient: float = 1e-3,
    n: int = 256,
    seed: int = 0,
    weighted: bool = True,
    progress: bool = False,
    **config: Any,
) -> TranscoderSet:
    """Train one transcoder per site on ``model``'s own data (module docstring).

    ``d_sae`` defaults to 4 × d_model. With ``weighted`` (the default) training tokens are drawn
    in proportion to the data's next-token loss weights (a zoo generator's: the positions the
    model is trained to predict), so the features cover what the model is judged on. Each
    transcoder's ``cfg.metrics`` holds its site metrics plus the whole replacement model's
    (``replacement_metrics`` on a held-out draw of the data when the data comes from a
    generator, on the training data otherwise).
    """
    ev = _as_data(model, data, n, seed)
    names = _choose_sites(model, sites, ev)
    pairs = site_pairs(model, ev, names)
    weights = token_weights(ev) if weighted else None
    out = TranscoderSet()
    start = time.perf_counter()
    for site in tqdm(names, disable=not progress, desc="transcoders", unit="site"):
        x, y = pairs[site]
        cfg = TranscoderConfig(
            d_in=x.shape[-1],
            d_sae=d_sae or 4 * model.cfg.d_model,
            d_out=y.shape[-1],
            site=site,
            activation_fn=activation,
            k=k,
            skip=skip,
            l1_coefficient=l1_coefficient,
            l0_coefficient=l0_coefficient,
            model_name=model.cfg.name,
            **config,
        )
        tc = _train_one(
            x, y, cfg, steps=steps, batch_size=batch_size, lr=lr, seed=seed, weights=weights
        )
        out[site] = tc
    seconds = time.perf_counter() - start
    held = ev
    if data is None and model.cfg.name.startswith("zoo:"):
        held = evaluation_data(model, n=min(n, 128), seed=seed + 1)
    test_pairs = site_pairs(model, held, names) if held is not ev else pairs
    whole = replacement_metrics(model, out, held)
    for site, tc in out.items():
        tc.cfg.metrics = {
            **site_metrics(tc, *test_pairs[site]),
            "replacement": whole,
            "train_steps": steps,
            "train_seconds_all_sites": seconds,
            "data": held.source,
        }
    logger.info(
        "trained %d transcoders in %.1f s; replacement KL %.4g", len(out), seconds, whole["kl"]
    )
    return out
