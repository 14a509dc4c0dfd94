"""The run context of a batch: position ids, attention masks per window, rotary angles."""

from __future__ import annotations

import torch
from torch import Tensor

from circuitfind.errors import InputError
from circuitfind.records import ModelConfig, ModelWeights, RunContext

__all__ = ["run_context"]


def run_context(
    cfg: ModelConfig,
    weights: ModelWeights,
    dtype: torch.dtype,
    tokens: Tensor,
    attention_mask: Tensor | None = None,
    position_ids: Tensor | None = None,
) -> RunContext:
    """``Model.context``: see there."""
    batch, seq = tokens.shape
    device = tokens.device
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
        if attention_mask.shape != tokens.shape:
            raise InputError(
                f"attention_mask shape {tuple(attention_mask.shape)} differs from tokens "
                f"shape {tuple(tokens.shape)}"
            )
        if bool(attention_mask.all()):
            attention_mask = None
    if position_ids is not None:
        positions = torch.as_tensor(position_ids, device=device).long()
        if positions.ndim == 1:
            positions = positions.unsqueeze(0)
        if positions.shape[-1] != seq or positions.shape[0] not in (1, batch):
            raise InputError(
                f"position_ids shape {tuple(positions.shape)} does not fit tokens shape "
                f"{tuple(tokens.shape)}; give [batch, pos] or [pos]"
            )
        positions = positions.expand(batch, seq)
        learned = cfg.positional == "learned"
        if learned and cfg.n_ctx and int(positions.max()) >= cfg.n_ctx:
            raise InputError(
                f"position id {int(positions.max())} is outside the model's context ({cfg.n_ctx})"
            )
    elif attention_mask is None:
        positions = torch.arange(seq, device=device).unsqueeze(0).expand(batch, seq)
    else:
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    q_idx = torch.arange(seq, device=device)[:, None]
    k_idx = torch.arange(seq, device=device)[None, :]
    masks: dict[int | None, Tensor] = {}
    for window in set(cfg.window):
        allowed = k_idx <= q_idx
        if window is not None:
            allowed = allowed & (q_idx - k_idx < window)
        allowed = allowed[None, None]  # [1, 1, q, k]
        if attention_mask is not None:
            allowed = allowed & attention_mask.bool()[:, None, None, :]
        masks[window] = allowed

    cos: dict[str | None, Tensor] = {}
    sin: dict[str | None, Tensor] = {}
    if weights.rotary is not None:
        dummy = torch.empty(0, dtype=dtype, device=device)
        for kind in set(cfg.rotary_kind) or {None}:
            args = (dummy, positions) if kind is None else (dummy, positions, kind)
            cos[kind], sin[kind] = weights.rotary(*args)
    return RunContext(positions, masks, cos, sin, attention_mask)
