"""The sender differences of a masked run, and the weighted sums receivers read from them.

A masked run (:func:`circuitfind.patching.masked_forward`) forms each receiver's input as the
ablated stream plus ``sum_s mask[s, r] D_s`` (``D_s = out_s - A_s``). Heads whose masks differ
(ACDC's later layers, a pruned circuit) each read their own sum over most of the upstream
senders. Stacking those senders' [b, p, d] tensors for every receiver group is a copy of the
whole run's activations per group, and was most of a masked run's time; here, without
autograd, the rows live in one preallocated buffer and a group's sums are one matrix product
over it. With autograd (mask fitting) they are a list, as in-place writes would break the
backward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuitfind.ops import pick_positions

__all__ = ["SenderRows"]


class SenderRows:
    """``D_0 .. D_{n-1}``, each [b, p, d]: the first ``k`` given (``prefix`` [k, b, p, d], read
    in place), the others appended as the run computes them (at most ``capacity`` in all)."""

    def __init__(self, prefix: Tensor, capacity: int) -> None:
        self.grad = torch.is_grad_enabled()
        self.capacity = capacity
        self.pre = prefix
        self.k = prefix.shape[0]
        if self.grad:
            self.rows: list[Tensor] = list(prefix.unbind(0))
            self.new: Tensor | None = None
        else:
            self.rows = []
            self.new = prefix.new_empty((max(capacity - self.k, 0), *prefix.shape[1:]))
        self.n = self.k

    def __len__(self) -> int:
        return self.n

    def row(self, i: int) -> Tensor:
        if self.grad:
            return self.rows[i]
        return self.pre[i] if i < self.k else self.new[i - self.k]  # type: ignore[index]

    def append(self, t: Tensor) -> Tensor:
        """Add ``D_n``; returns the stored row."""
        if self.grad:
            self.rows.append(t)
        else:
            self.new[self.n - self.k].copy_(t)  # type: ignore[index]
        self.n += 1
        return self.row(self.n - 1)

    def append_diff(self, out: Tensor, ablated: Tensor) -> Tensor:
        """Add ``D_n = out - ablated`` (written straight into the buffer); returns the row."""
        if self.grad:
            return self.append(out - ablated)
        row = self.new[self.n - self.k]  # type: ignore[index]
        torch.sub(out, ablated, out=row)
        self.n += 1
        return row

    def accumulate(self, total: Tensor, row: Tensor, fresh: bool) -> Tensor:
        """``total + row``: a new tensor when ``fresh`` (the old total is still read) or under
        autograd, else added in place."""
        return total + row if fresh or self.grad else total.add_(row)

    def total(self) -> Tensor:
        """sum of every row so far: [b, p, d]."""
        if self.grad:
            return torch.stack(self.rows).sum(0)
        out = self.pre.sum(0)
        if self.n > self.k:
            out = out + self.new[: self.n - self.k].sum(0)  # type: ignore[index]
        return out

    def weighted(
        self, rows: Tensor, weights: Tensor, upstream: int, base: Tensor, sign: float = 1.0
    ) -> Tensor:
        """``base + sign * sum_j weights[j, c] D[rows[j]]`` over the first ``upstream`` rows,
        column-major: [c, b, p, d] (``base`` [b, p, d])."""
        c = weights.shape[1]
        if self.grad or len(rows) * 4 <= upstream:  # few rows: gather them
            stacked = torch.stack([self.row(int(i)) for i in rows])  # [s, b, p, d]
            return base + sign * torch.einsum("sbpd,sc->cbpd", stacked, weights)
        dense = weights.new_zeros((upstream, c))
        dense[rows] = weights
        shape = self.pre.shape[1:]
        k = min(self.k, upstream)
        flat = base.reshape(1, -1).expand(c, -1)
        # one pass over the rows, the base added in the same kernel: [c, b*p*d]
        out = torch.addmm(flat, dense[:k].T, self.pre[:k].reshape(k, -1), alpha=sign)
        if upstream > k:
            new = self.new[: upstream - k].reshape(upstream - k, -1)  # type: ignore[index]
            out.addmm_(dense[k:].T, new, alpha=sign)
        return out.view(c, *shape)

    def pick(self, index: Tensor) -> SenderRows:
        """The same rows at positions ``index`` only (``pick_positions``), room kept for the
        rows still to come."""
        picked = torch.stack([pick_positions(self.row(i), index) for i in range(self.n)])
        return SenderRows(picked, self.capacity)
