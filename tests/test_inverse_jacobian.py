"""Broyden's limited-memory inverse Jacobian against the matrix it stands for.

``InverseJacobian`` stores ``H = h0 I + U V`` with only the terms in use allocated; every
operation the solver applies (rank-one terms, restarts when the memory is full, per-sample
resets, compaction of converged samples, copying into the full batch, the transpose for the
adjoint's warm start, the copy a later solve starts from) must leave the matrix it represents
equal to a dense reference built from the same terms.
"""

from __future__ import annotations

import torch

from implicit_transforms.solvers import InverseJacobian


def _dense(h: InverseJacobian, n: int) -> torch.Tensor:
    """The matrices ``H`` applied to the basis: ``(A, N, N)``."""
    eye = torch.eye(n, dtype=torch.float64)
    cols = [h.matvec(eye[j].expand(h.rows, n)) for j in range(n)]
    return torch.stack(cols, dim=-1)


def test_low_rank_terms_match_a_dense_reference_through_every_operation() -> None:
    gen = torch.Generator().manual_seed(0)
    b, n, memory, h0 = 5, 6, 4, -1.0
    like = torch.zeros(b, n, dtype=torch.float64)
    h = InverseJacobian.identity(b, n, memory, h0, like)
    assert h.dense is None  # n > memory: the low-rank form
    ref = h0 * torch.eye(n, dtype=torch.float64).expand(b, n, n).clone()
    for step in range(memory + 3):  # past the memory: one restart from h0 I
        if h.count == memory:
            ref = h0 * torch.eye(n, dtype=torch.float64).expand(b, n, n).clone()
        u = torch.randn(b, n, generator=gen, dtype=torch.float64)
        v = torch.randn(b, n, generator=gen, dtype=torch.float64)
        h.add(u, v)
        ref = ref + u[:, :, None] * v[:, None, :]
        torch.testing.assert_close(_dense(h, n), ref, msg=f"after term {step}")
    x = torch.randn(b, n, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(h.rmatvec(x), torch.einsum("an,anm->am", x, ref))
    # per-sample reset, then compaction of the samples still iterating
    mask = torch.tensor([True, False, False, True, False])
    h.reset(mask)
    ref[mask] = h0 * torch.eye(n, dtype=torch.float64)
    torch.testing.assert_close(_dense(h, n), ref)
    keep = torch.tensor([False, True, True, True, True])
    h.keep(keep)
    ref = ref[keep]
    torch.testing.assert_close(_dense(h, n), ref)
    h.add(torch.ones(4, n, dtype=torch.float64), torch.ones(4, n, dtype=torch.float64))
    ref = ref + 1.0
    torch.testing.assert_close(_dense(h, n), ref)
    # copy two samples into a full-batch approximation at rows 0 and 3; the others stay h0 I
    full = InverseJacobian.identity(b, n, memory, h0, like)
    leaving = torch.tensor([True, False, True, False])
    rows = torch.tensor([0, 3])
    h.write(full, leaving, rows)
    expect = h0 * torch.eye(n, dtype=torch.float64).expand(b, n, n).clone()
    expect[rows] = ref[leaving]
    torch.testing.assert_close(_dense(full, n), expect)
    # the transpose and a copy to start another solve from
    torch.testing.assert_close(_dense(full.transpose(), n), expect.mT)
    copy = full.reshaped_like(b, n, memory)
    assert copy is not None
    torch.testing.assert_close(_dense(copy, n), expect)
    copy.add(torch.ones(b, n, dtype=torch.float64), torch.ones(b, n, dtype=torch.float64))
    torch.testing.assert_close(_dense(full, n), expect)  # the copy never writes the original
    assert (
        full.reshaped_like(b, n, memory + 1) is None
        and full.reshaped_like(b + 1, n, memory) is None
    )


def test_dense_form_below_the_memory() -> None:
    like = torch.zeros(3, 4, dtype=torch.float64)
    h = InverseJacobian.identity(3, 4, 8, 2.0, like)
    assert h.dense is not None
    u, v = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    h.add(u, v)
    ref = 2.0 * torch.eye(4, dtype=torch.float64) + u[:, :, None] * v[:, None, :]
    torch.testing.assert_close(_dense(h, 4), ref)
