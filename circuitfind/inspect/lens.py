"""Logit lens and tuned lens: read the residual stream after each layer as a next-token guess.

Entry ``i`` of a lens is the residual stream entering layer ``i`` (entry 0 is the embedding),
and entry ``n_layers`` is the final stream, so the last entry of the logit lens equals the model's
own log-softmax. The tuned lens (Belrose et al. 2023) learns one affine translator per layer,
``h + h @ A + b`` (initialised to the identity), trained to minimise the KL divergence from the
model's final distribution; the last entry needs no translator.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from circuitfind.errors import InputError
from circuitfind.inspect._common import TokensLike, as_tokens

if TYPE_CHECKING:
    from circuitfind.model import Model

__all__ = ["TunedLens", "lens_kl", "logit_lens", "residual_streams", "train_tuned_lens"]

logger = logging.getLogger(__name__)


def residual_streams(
    model: Model, tokens: TokensLike, attention_mask: Tensor | None = None
) -> Tensor:
    """The residual stream before each layer and after the last: [n_layers + 1, batch, pos, d]."""
    ids, mask = as_tokens(model, tokens, attention_mask)
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, mask)
    assert cache.resid_final is not None
    return torch.stack([*cache.resid_pre, cache.resid_final])


def logit_lens(
    model: Model,
    tokens: TokensLike,
    attention_mask: Tensor | None = None,
    *,
    lens: TunedLens | None = None,
) -> Tensor:
    """Log-probabilities read from each layer's residual stream.

    Args:
        model: the model.
        tokens: token ids [batch, pos] (or text).
        attention_mask: [batch, pos] for padded batches.
        lens: a trained ``TunedLens`` to translate each stream first (default: the plain
            logit lens, final norm and unembedding only).

    Returns:
        [n_layers + 1, batch, pos, vocab] log-probabilities; entry 0 reads the embedding and the
        last entry equals ``log_softmax(model(tokens))``.
    """
    streams = residual_streams(model, tokens, attention_mask)
    with torch.no_grad():
        if lens is not None:
            streams = lens.translate(streams)
        return torch.stack([model.unembed(s).float().log_softmax(-1) for s in streams])


def lens_kl(
    model: Model,
    tokens: TokensLike,
    attention_mask: Tensor | None = None,
    *,
    lens: TunedLens | None = None,
) -> Tensor:
    """KL(final ‖ lens at layer i) in nats, averaged over real tokens: [n_layers + 1]."""
    ids, mask = as_tokens(model, tokens, attention_mask)
    logp = logit_lens(model, ids, mask, lens=lens)
    final = logp[-1]
    kl = (final.exp() * (final - logp)).sum(-1)  # [layer, batch, pos]
    if mask is None:
        return kl.mean((1, 2))
    weight = mask.to(kl.dtype)
    return (kl * weight).sum((1, 2)) / weight.sum()


@dataclass
class _LensConfig:
    d_model: int
    n_layers: int
    model_name: str = ""


class TunedLens(nn.Module):
    """Per-layer affine translators ``h -> h + h @ A_i + b_i`` (identity at initialisation)."""

    def __init__(self, d_model: int, n_layers: int, model_name: str = "") -> None:
        super().__init__()
        self.config = _LensConfig(d_model, n_layers, model_name)
        self.translators = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(n_layers))
        for t in self.translators:
            assert isinstance(t, nn.Linear)
            nn.init.zeros_(t.weight)
            nn.init.zeros_(t.bias)

    def translate(self, streams: Tensor) -> Tensor:
        """Translate [n_layers + 1, ..., d_model] streams (the last one is left as it is)."""
        out = [s + t(s.to(t.weight.dtype)).to(s.dtype) for s, t in zip(streams, self.translators)]
        return torch.stack([*out, streams[-1]])

    def save(self, path: str | Path) -> Path:
        """Write ``lens.safetensors`` and ``config.json`` into directory ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(path / "lens.safetensors"))
        (path / "config.json").write_text(json.dumps(self.config.__dict__, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> TunedLens:
        """Load a lens written by ``save``."""
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "lens.safetensors").is_file() or not (path / "config.json").is_file():
            raise InputError(
                f"{path} is not a tuned-lens directory (needs lens.safetensors and config.json); "
                "train one with `circuitfind lens --train-tuned DIR`"
            )
        cfg = json.loads((path / "config.json").read_text())
        lens = cls(cfg["d_model"], cfg["n_layers"], cfg.get("model_name", ""))
        lens.load_state_dict(load_file(str(path / "lens.safetensors")))
        return lens


def train_tuned_lens(
    model: Model,
    batches: Iterable[Tensor] | Tensor,
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    weight_decay: float = 1e-3,
    progress: bool = False,
) -> TunedLens:
    """Train a tuned lens on token batches (a [n, pos] tensor is cut into batches of 16).

    Each translator minimises KL(final ‖ translated lens) over every position; the model is
    frozen. Returns the trained lens (on the model's device).
    """
    if isinstance(batches, Tensor):
        batches = list(batches.split(16))
    batches = list(batches)
    if not batches:
        raise InputError("no token batches to train the tuned lens on")
    cfg = model.cfg
    lens = TunedLens(cfg.d_model, cfg.n_layers, cfg.name).to(model.device)
    opt = torch.optim.Adam(lens.parameters(), lr=lr, weight_decay=weight_decay)
    steps = tqdm(range(epochs * len(batches)), disable=not progress, desc="tuned lens")
    for step in steps:
        ids = batches[step % len(batches)].to(model.device)
        streams = residual_streams(model, ids).float()
        with torch.no_grad():
            target = model.unembed(streams[-1].to(model.dtype)).float().log_softmax(-1)
        loss = torch.zeros((), device=model.device)
        for layer, t in enumerate(lens.translators):
            s = streams[layer]
            logp = model.unembed((s + t(s)).to(model.dtype)).float().log_softmax(-1)
            loss = loss + F.kl_div(logp, target, log_target=True, reduction="none").sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps.set_postfix(kl=loss.item() / cfg.n_layers)
    logger.info(
        "tuned lens trained: mean KL %.4f nats on the last batch", loss.item() / cfg.n_layers
    )
    return lens.eval()
