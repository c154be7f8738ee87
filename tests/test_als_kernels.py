"""ALS kernels against slow, obviously correct NumPy twins."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from mfdask.kernels.als import objective_rows, penalty_rows, solve_rows_cg, solve_rows_cholesky


def _problem(n_rows=40, n_src=30, k=8, density=0.25, seed=0, binary=False):
    rng = np.random.default_rng(seed)
    mask = rng.random((n_rows, n_src)) < density
    mask[3] = False  # a row without observed entries
    values = np.ones(mask.sum()) if binary else rng.integers(4, 6, mask.sum())
    u, i = np.nonzero(mask)
    csr = sp.csr_matrix((values.astype(np.float32), (u, i)), shape=(n_rows, n_src))
    csr.sort_indices()
    src = rng.normal(0, 0.5, (n_src, k)).astype(np.float32)
    return csr, src


def _dense_weights(csr, alpha, offset):
    """C (dense) and P (dense) as the paper writes them."""
    r = csr.toarray().astype(np.float64)
    observed = r > 0
    c = np.where(observed, offset + alpha * r, 1.0)
    return c, observed.astype(np.float64)


def _direct_solve(csr, src, reg, power, alpha, offset):
    """Each row's normal equations (Y^T C^u Y + lam_u I) x = Y^T C^u p_u, densely."""
    c, p = _dense_weights(csr, alpha, offset)
    y = src.astype(np.float64)
    out = np.zeros((csr.shape[0], src.shape[1]))
    for u in range(csr.shape[0]):
        n_u = csr.indptr[u + 1] - csr.indptr[u]
        if n_u == 0:
            continue
        lam = reg * n_u**power
        a = y.T @ (c[u][:, None] * y) + lam * np.eye(y.shape[1])
        out[u] = np.linalg.solve(a, y.T @ (c[u] * p[u]))
    return out


def _dense_objective(csr, src, dst, reg, power, alpha, offset):
    c, p = _dense_weights(csr, alpha, offset)
    s = dst.astype(np.float64) @ src.astype(np.float64).T
    n = np.diff(csr.indptr)
    lam = reg * n.astype(np.float64) ** power
    return (c * (p - s) ** 2).sum(), (lam * (dst.astype(np.float64) ** 2).sum(1)).sum()


FORMS = [
    pytest.param(0.1, 0.0, 2.0, 1.0, id="paper-plain"),
    pytest.param(0.05, 1.0, 1.0, 1.0, id="paper-count-scaled"),
    pytest.param(0.2, 0.5, 1.0, 1.0, id="paper-count-power-0.5"),
    pytest.param(0.1, 0.0, 2.0, 0.0, id="implicit-plain"),
]


@pytest.mark.parametrize(("reg", "power", "alpha", "offset"), FORMS)
def test_cholesky_matches_direct_solve(reg, power, alpha, offset):
    csr, src = _problem()
    gram = src.astype(np.float64).T @ src.astype(np.float64)
    dst = np.full((csr.shape[0], src.shape[1]), np.nan, dtype=np.float32)
    failed = solve_rows_cholesky(
        csr.indptr.astype(np.int64),
        csr.indices,
        csr.data,
        src,
        gram,
        dst,
        reg,
        power,
        alpha,
        offset,
        0,
        csr.shape[0],
    )
    assert failed == -1
    expected = _direct_solve(csr, src, reg, power, alpha, offset)
    np.testing.assert_allclose(dst, expected, rtol=1e-5, atol=1e-5)
    assert not dst[3].any(), "a row without observations gets a zero factor"


def test_cholesky_solves_only_its_row_range():
    csr, src = _problem()
    gram = src.astype(np.float64).T @ src.astype(np.float64)
    dst = np.full((csr.shape[0], src.shape[1]), 7.0, dtype=np.float32)
    solve_rows_cholesky(
        csr.indptr.astype(np.int64),
        csr.indices,
        csr.data,
        src,
        gram,
        dst,
        0.1,
        0.0,
        1.0,
        1.0,
        10,
        20,
    )
    assert (dst[:10] == 7).all() and (dst[20:] == 7).all() and not (dst[10:20] == 7).all()


def test_cholesky_reports_indefinite_rows():
    csr, src = _problem(binary=True)
    dst = np.zeros((csr.shape[0], src.shape[1]), dtype=np.float32)
    # implicit's form with alpha * r < 1 gives C - 1 < 0: with a Gram matrix that does not
    # cover the observed rows (here none) and no regularization, A is negative definite.
    failed = solve_rows_cholesky(
        csr.indptr.astype(np.int64),
        csr.indices,
        csr.data,
        src,
        np.zeros((8, 8)),
        dst,
        0.0,
        0.0,
        0.01,
        0.0,
        0,
        csr.shape[0],
    )
    assert failed >= 0


@pytest.mark.parametrize(("reg", "power", "alpha", "offset"), FORMS)
def test_cg_converges_to_the_exact_solution(reg, power, alpha, offset):
    csr, src = _problem()
    k = src.shape[1]
    gram = (src.T @ src).astype(np.float32)
    dst = np.zeros((csr.shape[0], k), dtype=np.float32)
    solve_rows_cg(
        csr.indptr.astype(np.int64),
        csr.indices,
        csr.data,
        src,
        gram,
        dst,
        reg,
        power,
        alpha,
        offset,
        3 * k,
        0,
        csr.shape[0],
    )
    expected = _direct_solve(csr, src, reg, power, alpha, offset)
    np.testing.assert_allclose(dst, expected, rtol=1e-3, atol=1e-3)


def test_few_cg_steps_lower_each_rows_objective():
    csr, src = _problem()
    gram64 = src.astype(np.float64).T @ src.astype(np.float64)
    rng = np.random.default_rng(1)
    start = rng.normal(0, 0.1, (csr.shape[0], src.shape[1])).astype(np.float32)
    args = (csr.indptr.astype(np.int64), csr.indices, csr.data, src)
    before = sum(objective_rows(*args, gram64, start, 0.1, 0.0, 2.0, 1.0))
    dst = start.copy()
    solve_rows_cg(*args, gram64.astype(np.float32), dst, 0.1, 0.0, 2.0, 1.0, 2, 0, len(dst))
    after = sum(objective_rows(*args, gram64, dst, 0.1, 0.0, 2.0, 1.0))
    assert after < before


@pytest.mark.parametrize(("reg", "power", "alpha", "offset"), FORMS)
def test_objective_matches_dense_computation(reg, power, alpha, offset):
    csr, src = _problem(seed=2)
    rng = np.random.default_rng(3)
    dst = rng.normal(0, 0.3, (csr.shape[0], src.shape[1])).astype(np.float32)
    gram = src.astype(np.float64).T @ src.astype(np.float64)
    error, penalty = objective_rows(
        csr.indptr.astype(np.int64),
        csr.indices,
        csr.data,
        src,
        gram,
        dst,
        reg,
        power,
        alpha,
        offset,
    )
    exp_error, exp_penalty = _dense_objective(csr, src, dst, reg, power, alpha, offset)
    np.testing.assert_allclose([error, penalty], [exp_error, exp_penalty], rtol=1e-6)
    np.testing.assert_allclose(
        penalty_rows(csr.indptr.astype(np.int64), dst, reg, power), exp_penalty, rtol=1e-6
    )


def test_kernels_compile_once_for_consistent_types():
    _, src = _problem()
    gram = src.astype(np.float64).T @ src.astype(np.float64)
    for seed in range(3):
        c2, s2 = _problem(seed=seed)
        dst = np.zeros((c2.shape[0], s2.shape[1]), dtype=np.float32)
        solve_rows_cholesky(
            c2.indptr.astype(np.int64),
            c2.indices,
            c2.data,
            s2,
            gram,
            dst,
            0.1,
            0.0,
            1.0,
            1.0,
            0,
            c2.shape[0],
        )
    assert len(solve_rows_cholesky.signatures) == 1
