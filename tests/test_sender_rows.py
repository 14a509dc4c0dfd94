"""SenderRows' weighted sums against a plain stack-and-sum, with and without autograd."""

from __future__ import annotations

import pytest
import torch

from circuitfind.sender_rows import SenderRows


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("n_rows", [2, 9])  # gathered (few rows) and dense (many)
def test_weighted_sums_match_a_plain_sum(grad, n_rows) -> None:
    g = torch.Generator().manual_seed(0)
    b, p, d, k, extra = 2, 3, 5, 4, 8
    prefix = torch.randn(k, b, p, d, generator=g)
    more = [torch.randn(b, p, d, generator=g) for _ in range(extra)]
    ablated = torch.randn(b, p, d, generator=g)
    with torch.set_grad_enabled(grad):
        rows = SenderRows(prefix, k + extra)
        for t in more[:-1]:
            rows.append(t)
        rows.append_diff(more[-1] + ablated, ablated)
        everything = torch.cat([prefix, torch.stack(more)])
        torch.testing.assert_close(rows.total(), everything.sum(0))
        upstream = k + extra - 1
        idx = torch.randperm(upstream, generator=g)[:n_rows]
        w = torch.randn(n_rows, 3, generator=g)
        base = torch.randn(b, p, d, generator=g)
        got = rows.weighted(idx, w, upstream, base, sign=-1.0)
        want = base - torch.einsum("sbpd,sc->cbpd", everything[idx], w)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        picked = rows.pick(torch.tensor([2]))
        assert len(picked) == len(rows)
        torch.testing.assert_close(picked.total(), everything[:, :, 2:3].sum(0))
