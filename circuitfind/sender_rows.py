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

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

from circuitfind.ops import pick_positions

__all__ = ["PrefixSums", "SenderRows", "sparse_addmm"]

V = TypeVar("V")


class SenderRows:
    """``D_0 .. D_{n-1}``, each [b, p, d]: the first ``k`` given (``prefix`` [k, b, p, d], read
    in place), the others appended as the run computes them (at most ``capacity`` in all; in
    a buffer of ``buffers`` when given)."""

    def __init__(self, prefix: Tensor, capacity: int, buffers: PrefixSums | None = None) -> None:
        self.grad = torch.is_grad_enabled()
        self.capacity = capacity
        self.pre = prefix
        self.k = prefix.shape[0]
        if self.grad:
            self.rows: list[Tensor] = list(prefix.unbind(0))
            self.new: Tensor | None = None
        else:
            self.rows = []
            shape = (max(capacity - self.k, 0), *prefix.shape[1:])
            self.new = prefix.new_empty(shape) if buffers is None else buffers.out(shape, prefix)
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

    def append_heads(self, z: Tensor, W_O: Tensor, ablated: Tensor, total: Tensor) -> Tensor:
        """Add one layer's heads, ``D_h = z_h W_O[h] - ablated[h]`` (``z`` [b, p, h, e], ``W_O``
        [h, e, d], ``ablated`` [h, b, p, d]), made in the buffer by one batched product
        without autograd; returns ``total`` plus their sum (a new tensor)."""
        H = z.shape[2]
        if self.grad:
            heads = torch.einsum("bphe,hed->bphd", z, W_O)
            rows = [self.append(heads[:, :, h] - ablated[h]) for h in range(H)]
            return total + torch.stack(rows).sum(0)
        start = self.n - self.k
        block = self.new[start : start + H]  # type: ignore[index]
        b, p, d = block.shape[1:]
        zt = z.permute(2, 0, 1, 3).reshape(H, b * p, z.shape[3])
        torch.baddbmm(ablated.reshape(H, b * p, d), zt, W_O, beta=-1.0, out=block.view(H, b * p, d))
        self.n += H
        return total + block.sum(0)

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
        self,
        rows: Tensor,
        weights: Tensor,
        upstream: int,
        base: Tensor,
        sign: float = 1.0,
        buffers: PrefixSums | None = None,
    ) -> Tensor:
        """``base + sign * sum_j weights[j, c] D[rows[j]]`` over the first ``upstream`` rows,
        column-major: [c, b, p, d] (``base`` [b, p, d]); written into a buffer of ``buffers``
        when given."""
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
        into = None if buffers is None else buffers.out((c, flat.shape[1]), flat)
        if into is None:
            into = flat.new_empty((c, flat.shape[1]))
        out = sparse_addmm(flat, sign * dense[:k], self.pre[:k].reshape(k, -1), into)
        if upstream > k:
            new = self.new[: upstream - k].reshape(upstream - k, -1)  # type: ignore[index]
            out = sparse_addmm(out, sign * dense[k:], new, out)
        return out.view(c, *shape)

    def pick(self, index: Tensor, reuse: PrefixSums | None = None) -> SenderRows:
        """The same rows at positions ``index`` only (``pick_positions``), room kept for the
        rows still to come; without autograd the given rows' picks are kept in ``reuse``."""
        if self.grad:
            picked = torch.stack([pick_positions(self.row(i), index) for i in range(self.n)])
            return SenderRows(picked, self.capacity)

        def at(rows: Tensor) -> Tensor:  # [m, b, p, d] -> [m, b, len(index), d]
            return pick_positions(rows.movedim(0, 2), index).movedim(2, 0)

        pre = (
            at(self.pre) if reuse is None else reuse.constant("picked", lambda: at(self.pre), index)
        )
        new = at(self.new[: self.n - self.k])  # type: ignore[index]
        return SenderRows(torch.cat([pre, new]), self.capacity)


class PrefixSums:
    """What a run of masked runs from one start layer can share (ACDC's trials at one receiver
    layer): for each receiver group past that layer, its ablated base plus its weighted sum
    over the senders before the start layer (``[c, b*p*d]``), kept while the group's weights
    on those senders stay the same, so each run reads only the senders it recomputes. Every
    value is made by the same operation whether it is kept or not, so a run's result does not
    depend on what ran before it (a resumed search makes the same bits). ``out`` hands out one
    reusable output buffer per shape (large fresh tensors cost a page fault per page; runs
    one after another may share ``buffers``). ``constant`` keeps what a run derives from its
    prefix and ablated outputs alone (their running sums, the prefix rows at the readout)."""

    def __init__(
        self, limit: int | None = None, buffers: dict[tuple[int, ...], Tensor] | None = None
    ) -> None:
        self.limit = limit  # bytes of kept sums at most (None: no limit)
        self.prefix: Tensor | None = None  # held, so no other tensor takes its address
        self.ablated: Tensor | None = None  # held, as the prefix
        self.key: tuple[object, ...] | None = None
        self.fixed: dict[str, tuple[Tensor | None, Any]] = {}
        self.sums: dict[tuple[int, ...], tuple[Tensor, Tensor]] = {}
        self.buffers = {} if buffers is None else buffers  # scratch: may be shared
        self.hits = 0
        self.bytes = 0
        self.claimed = 0  # bytes this run claimed (``claim``)
        self.used: set[tuple[int, ...]] = set()  # the sums this run asked for

    def start(self, prefix: Tensor, rows: int, ablated: Tensor | None = None) -> None:
        """A run whose first ``rows`` sender rows are ``prefix``, its ablated outputs
        ``ablated`` (the same tensors as the last run's, unchanged, or others: then the kept
        sums and constants go)."""
        key = (*_ident(prefix), rows, *(() if ablated is None else _ident(ablated)))
        if key != self.key:
            self.prefix, self.ablated, self.key = prefix, ablated, key
            self.sums, self.fixed, self.bytes = {}, {}, 0
        self.claimed, self.used = 0, set()

    def constant(self, name: str, make: Callable[[], V], check: Tensor | None = None) -> V:
        """``make()`` once per start (and per value of ``check``, compared by value): a value a
        run derives from its prefix and ablated outputs alone. The run must not write it."""
        hit = self.fixed.get(name)
        if hit is not None and _same(hit[0], check):
            return hit[1]  # type: ignore[no-any-return]
        value = make()
        self.fixed[name] = (None if check is None else check.clone(), value)
        return value

    def claim(self, nbytes: int) -> bool:
        """Whether this run may keep a sum of ``nbytes`` more (the run's own claims, in its
        order, within ``limit``): a run takes the same path whatever ran before it."""
        if self.limit is not None and self.claimed + nbytes > self.limit:
            return False
        self.claimed += nbytes
        return True

    def get(self, cols: tuple[int, ...], weights: Tensor, make: Callable[[], Tensor]) -> Tensor:
        """The kept sum of the groups ``cols`` for prefix ``weights`` [k, c], else ``make()``,
        kept for the next run (sums this run did not ask for go first if room is short)."""
        self.used.add(cols)
        hit = self.sums.pop(cols, None)
        if hit is not None:
            self.bytes -= _nbytes(hit[1])
        if hit is not None and torch.equal(hit[0], weights):
            self.hits += 1
            entry = hit
        else:
            entry = (weights.clone(), make())
        size = _nbytes(entry[1])
        stale = [c for c in self.sums if c not in self.used]
        while self.limit is not None and self.bytes + size > self.limit and stale:
            self.bytes -= _nbytes(self.sums.pop(stale.pop())[1])
        if self.limit is None or self.bytes + size <= self.limit:
            self.sums[cols] = entry
            self.bytes += size
        return entry[1]

    def out(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        buf = self.buffers.get(shape)
        if buf is None or buf.dtype != like.dtype or buf.device != like.device:
            buf = self.buffers[shape] = like.new_empty(shape)
        return buf


# Below this share of non-zero weights the row-by-row sum: it reads one row per non-zero
# weight, the dense product every row for every column (though at a matrix product's speed).
# Its effect on ACDC's trials: reports/speed_acdc_states.md.
SPARSE_SHARE = 0.15


def sparse_addmm(base: Tensor, weights: Tensor, rows: Tensor, out: Tensor) -> Tensor:
    """``base + weights.T @ rows`` into ``out`` ([c, n]; ``weights`` [s, c], ``rows`` [s, n];
    ``base`` may be ``out``).
    With few non-zero weights (a pruned circuit's later receivers keep few of the senders a
    run recomputes) each column adds only the rows it keeps; otherwise one dense product.
    Which way is taken depends on ``weights`` alone, so a run's bits do not depend on what
    ran before it."""
    nz = weights.nonzero()
    if len(nz) > SPARSE_SHARE * weights.numel():
        if base is out:
            return out.addmm_(weights.T, rows)
        return torch.addmm(base, weights.T, rows, out=out)
    if base is not out:
        out.copy_(base)
    for (j, c), w in zip(nz.tolist(), weights[nz[:, 0], nz[:, 1]].tolist(), strict=True):
        out[c].add_(rows[j], alpha=w)
    return out


def _same(a: Tensor | None, b: Tensor | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and torch.equal(a, b)


def _ident(t: Tensor) -> tuple[object, ...]:
    """A tensor's storage, view and version: equal for the same unchanged tensor."""
    return (t.data_ptr(), tuple(t.shape), t.stride(), t._version)


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()
