"""Small tensor operations the canonical forward is built from."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pick_positions", "rms_norm", "rotate_half"]


def rms_norm(x: Tensor, w: Tensor, eps: float) -> Tensor:
    dtype = x.dtype
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return w * x32.to(dtype)


def pick_positions(x: Tensor, index: Tensor) -> Tensor:
    """x[:, index] for a shared [n] index, or row by row for a [batch, n] one (x: [batch,
    pos, ...]; a batch-1 x is broadcast to the index's rows)."""
    if index.dim() == 1:
        return x[:, index]
    if x.shape[0] != index.shape[0]:
        x = x.expand(index.shape[0], *x.shape[1:])
    rows = torch.arange(index.shape[0], device=index.device)[:, None]
    return x[rows, index]


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
