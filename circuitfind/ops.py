"""Small tensor operations the canonical forward is built from."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "pick_positions",
    "rms_norm",
    "rms_norm_jvp",
    "rms_norm_vjp",
    "rotate_every_two",
    "rotate_half",
    "softcap",
]


def rms_norm(x: Tensor, w: Tensor, eps: float, offset: float = 0.0) -> Tensor:
    """RMSNorm over the last axis, scaled by ``offset + w``.

    ``offset == 0`` is Llama's (normalise in float32, cast, then scale); ``offset != 0`` is
    Gemma's ``(1 + w)``, which scales in float32 before the cast (OLMo-2 also scales in float32:
    in float32 the two orders agree).
    """
    dtype = x.dtype
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    if offset:
        return (x32 * (offset + w.float())).to(dtype)
    return w * x32.to(dtype)


def rms_norm_jvp(x: Tensor, v: Tensor, w: Tensor, eps: float, offset: float = 0.0) -> Tensor:
    """The RMSNorm's Jacobian at ``x`` applied to ``v`` (both [..., d], float32 result).

    N(x) = (offset + w) * x r, r = (mean(x^2) + eps)^-1/2, so
    J v = (offset + w) * r * (v - xh (xh . v) / d) with xh = x r. The Jacobian is symmetric up
    to the weight, so the vector-Jacobian product is J^T g = r (g' - xh (xh . g') / d) with
    g' = (offset + w) * g (``rms_norm_vjp``).
    """
    x = x.float()
    d = x.shape[-1]
    r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    xh = x * r
    v = v.float()
    return (offset + w.float()) * r * (v - xh * (xh * v).sum(-1, keepdim=True) / d)


def rms_norm_vjp(x: Tensor, g: Tensor, w: Tensor, eps: float, offset: float = 0.0) -> Tensor:
    """J^T g for the RMSNorm at ``x`` (see ``rms_norm_jvp``), float32."""
    x = x.float()
    d = x.shape[-1]
    r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    xh = x * r
    gw = g.float() * (offset + w.float())
    return r * (gw - xh * (xh * gw).sum(-1, keepdim=True) / d)


def softcap(x: Tensor, cap: float | None) -> Tensor:
    """``cap * tanh(x / cap)`` (Gemma-2's attention-logit and final-logit soft-capping)."""
    if cap is None:
        return x
    return torch.tanh(x / cap) * cap


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
    """Rotary's pairing of dimension i with i + d/2 (Llama, NeoX)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate_every_two(x: Tensor) -> Tensor:
    """Rotary's pairing of dimension 2i with 2i + 1 (GPT-J)."""
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)
