"""Implicit-feedback ALS kernels: per-row normal equations, solved exactly or by CG.

The model (Hu, Koren & Volinsky 2008, "Collaborative Filtering for Implicit Feedback
Datasets", eq. 3) minimises over user factors ``X`` and item factors ``Y``::

    L = sum_{u,i} C_ui (P_ui - x_u . y_i)^2  +  sum_u lam_u |x_u|^2  +  sum_i lam_i |y_i|^2

with preference ``P_ui = 1`` for an observed positive and ``0`` elsewhere, and confidence
``C_ui = 1`` for every unobserved entry. For an observed entry with value ``r`` the
confidence is ``C_ui = offset + alpha * r``: ``offset = 1`` is the paper's
``1 + alpha * r``, ``offset = 0`` is implicit 0.7's ``alpha * r``. ``lam_u`` is
``regularization * n_u ** count_power`` where ``n_u`` is the number of observed entries
of row ``u``: ``count_power = 0`` is a plain ``regularization`` (Hu et al.; ``implicit``),
``1`` is ALS-WR's ``regularization * n_u`` (Zhou et al. 2008, as in Spark MLlib), and
values between are the frequency exponent ``ν`` of Rendle et al.'s frequency-scaled
regularization ("Revisiting the Performance of iALS on Item Recommendation Benchmarks",
RecSys 2022). ``n ** 0 = 1`` and ``n ** 1 = n`` exactly, so the two classic forms are
computed as before.

With ``Y`` fixed, row ``u``'s factor solves the normal equations (paper eq. 4)::

    (Y^T C^u Y + lam_u I) x_u = Y^T C^u p_u

and since ``C^u = I + (C^u - I)`` where ``C^u - I`` is zero off the observed entries::

    Y^T C^u Y = Y^T Y + sum_{i in obs(u)} (C_ui - 1) y_i y_i^T
    Y^T C^u p_u = sum_{i in obs(u)} C_ui y_i

so the dense ``Y^T Y`` (the caller's ``gram``) is computed once per half-iteration and
each row only touches its own observed entries: ``O(n_u k^2 + k^3)`` per row
(Cholesky) or ``O(steps (n_u k + k^2))`` (conjugate gradient, Takács, Pilászy & Tikk
2011, warm-started from the previous factors as the ``implicit`` library does).

Every kernel works on one block of rows in CSR form (local rows ``start..stop-1``) with
column indices into the source factors: one matrix ``src``, or for the ``*_parts``
kernels two, ``src`` then ``src_rest``, indexed as if stacked (a routed half-step reads
its own worker's source block in place and the rows sent by the others after it). The
same kernel serves the user half (src = items) and the item half (src = users).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True, inline="always")
def _source_row(src: np.ndarray, src_rest: np.ndarray, index: int) -> np.ndarray:
    """Source row ``index`` of the pair ``(src, src_rest)`` read as one matrix."""
    n = src.shape[0]
    return src[index] if index < n else src_rest[index - n]


@njit(nogil=True, cache=True, fastmath=True)
def solve_rows_cholesky_parts(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    src: np.ndarray,
    src_rest: np.ndarray,
    gram: np.ndarray,
    dst: np.ndarray,
    regularization: float,
    count_power: float,
    alpha: float,
    offset: float,
    start: int,
    stop: int,
) -> int:
    """Solve rows ``start..stop-1`` exactly: build ``A`` and ``b``, Cholesky, two sweeps.

    Parameters
    ----------
    indptr : (n_local + 1,) int64
    indices : (nnz,) int32
        Global source-row indices, one per observed entry.
    data : (nnz,) float32
        The observed value ``r`` (1 for a binary positive, or the rating).
    src : (n_src, k) float32
        Source factors (``Y`` for the user half).
    src_rest : (n_rest, k) float32
        More source rows: index ``i >= n_src`` is row ``i - n_src`` of ``src_rest``. A
        routed destination reads its own worker's source block in place as ``src`` and
        the rows the other workers sent as ``src_rest`` (no copy joins the two); a
        broadcast passes an empty ``src_rest``.
    gram : (k, k) float64
        ``src^T src``.
    dst : (n_local, k) float32
        Output, overwritten for the rows solved. A row without observed entries gets 0:
        its right-hand side is zero, so 0 is the solution (and, with ``count_power > 0``,
        the only safe choice since ``A = Y^T Y`` may be singular).
    regularization, count_power, alpha, offset
        See the module docstring.
    """
    k = src.shape[1]
    a = np.empty((k, k), dtype=np.float64)
    b = np.empty(k, dtype=np.float64)
    y = np.empty(k, dtype=np.float64)
    for row in range(start, stop):
        lo = indptr[row]
        hi = indptr[row + 1]
        if hi == lo:
            dst[row, :] = 0.0
            continue
        lam = regularization * (hi - lo) ** count_power
        # A = Y^T Y + lam I, lower triangle only (A is symmetric).
        for p in range(k):
            for q in range(p + 1):
                a[p, q] = gram[p, q]
            a[p, p] += lam
            b[p] = 0.0
        # A += sum (C_ui - 1) y_i y_i^T and b += C_ui y_i over the observed entries.
        for j in range(lo, hi):
            c = offset + alpha * data[j]
            cm1 = c - 1.0
            row_y = _source_row(src, src_rest, indices[j])
            for p in range(k):
                y[p] = row_y[p]
            for p in range(k):
                w = cm1 * y[p]
                b[p] += c * y[p]
                for q in range(p + 1):
                    a[p, q] += w * y[q]
        # In-place Cholesky A = L L^T (L in the lower triangle of a).
        for p in range(k):
            s = a[p, p]
            for q in range(p):
                s -= a[p, q] * a[p, q]
            if s <= 0.0:
                return row
            d = np.sqrt(s)
            a[p, p] = d
            for r in range(p + 1, k):
                t = a[r, p]
                for q in range(p):
                    t -= a[r, q] * a[p, q]
                a[r, p] = t / d
        # Forward sweep L z = b, then backward sweep L^T x = z (both in b).
        for p in range(k):
            t = b[p]
            for q in range(p):
                t -= a[p, q] * b[q]
            b[p] = t / a[p, p]
        for p in range(k - 1, -1, -1):
            t = b[p]
            for q in range(p + 1, k):
                t -= a[q, p] * b[q]
            b[p] = t / a[p, p]
        for p in range(k):
            dst[row, p] = b[p]
    return -1


@njit(nogil=True, cache=True, fastmath=True)
def solve_rows_cg_parts(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    src: np.ndarray,
    src_rest: np.ndarray,
    gram: np.ndarray,
    dst: np.ndarray,
    regularization: float,
    count_power: float,
    alpha: float,
    offset: float,
    cg_steps: int,
    start: int,
    stop: int,
) -> None:
    """Improve rows ``start..stop-1`` of ``dst`` in place by ``cg_steps`` CG steps.

    ``dst`` holds the previous factors on entry (the warm start: after the first
    iterations they are close to the new solution, so three steps suffice, as in
    Takács et al. 2011 and ``implicit``). ``A p`` is applied without forming ``A``::

        A p = (Y^T Y) p + lam_u p + sum_{i in obs(u)} (C_ui - 1) (y_i . p) y_i

    at ``O(k^2 + n_u k)`` per step. ``gram`` is ``(k, k) float32`` here; other
    arguments are as in :func:`solve_rows_cholesky`.
    """
    k = src.shape[1]
    x = np.empty(k, dtype=np.float32)
    r = np.empty(k, dtype=np.float32)
    p = np.empty(k, dtype=np.float32)
    ap = np.empty(k, dtype=np.float32)
    for row in range(start, stop):
        lo = indptr[row]
        hi = indptr[row + 1]
        if hi == lo:
            dst[row, :] = 0.0
            continue
        lam = np.float32(regularization * (hi - lo) ** count_power)
        for q in range(k):
            x[q] = dst[row, q]
        # Residual r = b - A x = sum C_ui y_i - (Y^T Y + lam I) x - sum (C_ui - 1)(y_i.x) y_i.
        for q in range(k):
            t = np.float32(0.0)
            for s in range(k):
                t += gram[q, s] * x[s]
            r[q] = -t - lam * x[q]
        for j in range(lo, hi):
            c = np.float32(offset + alpha * data[j])
            row_y = _source_row(src, src_rest, indices[j])
            dot = np.float32(0.0)
            for q in range(k):
                dot += row_y[q] * x[q]
            w = c - (c - np.float32(1.0)) * dot
            for q in range(k):
                r[q] += w * row_y[q]
        rs_old = np.float32(0.0)
        for q in range(k):
            p[q] = r[q]
            rs_old += r[q] * r[q]
        # CG on A x = b starting from the warm start.
        for _ in range(cg_steps):
            if rs_old < 1e-20:
                break
            for q in range(k):
                t = np.float32(0.0)
                for s in range(k):
                    t += gram[q, s] * p[s]
                ap[q] = t + lam * p[q]
            for j in range(lo, hi):
                cm1 = np.float32(offset + alpha * data[j] - 1.0)
                row_y = _source_row(src, src_rest, indices[j])
                dot = np.float32(0.0)
                for q in range(k):
                    dot += row_y[q] * p[q]
                w = cm1 * dot
                for q in range(k):
                    ap[q] += w * row_y[q]
            pap = np.float32(0.0)
            for q in range(k):
                pap += p[q] * ap[q]
            if pap <= 0.0:
                break
            step = rs_old / pap
            rs_new = np.float32(0.0)
            for q in range(k):
                x[q] += step * p[q]
                r[q] -= step * ap[q]
                rs_new += r[q] * r[q]
            beta = rs_new / rs_old
            for q in range(k):
                p[q] = r[q] + beta * p[q]
            rs_old = rs_new
        for q in range(k):
            dst[row, q] = x[q]


@njit(nogil=True, cache=True, fastmath=True)
def objective_rows_parts(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    src: np.ndarray,
    src_rest: np.ndarray,
    gram: np.ndarray,
    dst: np.ndarray,
    regularization: float,
    count_power: float,
    alpha: float,
    offset: float,
) -> tuple[float, float]:
    """This block's share of the objective, without densifying the rating matrix.

    For each row ``u`` of the block (factor ``x_u = dst[u]``)::

        sum_i C_ui (P_ui - s_ui)^2
            = x_u^T (Y^T Y) x_u + sum_{i in obs(u)} [C_ui (1 - s_ui)^2 - s_ui^2]

    with ``s_ui = x_u . y_i``: the first term is the loss if every entry were
    unobserved (``C = 1``, ``P = 0``); the sum corrects the observed ones (the trick of
    ``implicit``'s ``calculate_loss``).

    Returns
    -------
    (float, float)
        The weighted squared error over the block's rows and its rows' L2 penalty
        ``sum_u lam_u |x_u|^2``.
    """
    k = src.shape[1]
    error = 0.0
    penalty = 0.0
    for row in range(dst.shape[0]):
        lo = indptr[row]
        hi = indptr[row + 1]
        lam = regularization * (hi - lo) ** count_power
        quad = 0.0
        norm = 0.0
        for q in range(k):
            t = 0.0
            for s in range(k):
                t += gram[q, s] * dst[row, s]
            quad += t * dst[row, q]
            norm += dst[row, q] * dst[row, q]
        error += quad
        penalty += lam * norm
        for j in range(lo, hi):
            c = offset + alpha * data[j]
            row_y = _source_row(src, src_rest, indices[j])
            s_ui = 0.0
            for q in range(k):
                s_ui += row_y[q] * dst[row, q]
            error += c * (1.0 - s_ui) ** 2 - s_ui * s_ui
    return error, penalty


@njit(nogil=True, cache=True, fastmath=True)
def penalty_rows(
    indptr: np.ndarray, factors: np.ndarray, regularization: float, count_power: float
) -> float:
    """``sum_u lam_u |x_u|^2`` over the rows of a block (the other side's L2 term)."""
    total = 0.0
    for row in range(factors.shape[0]):
        n = indptr[row + 1] - indptr[row]
        lam = regularization * n**count_power
        norm = 0.0
        for q in range(factors.shape[1]):
            norm += factors[row, q] * factors[row, q]
        total += lam * norm
    return total


@njit(nogil=True, cache=True, fastmath=True)
def cg_products_rows(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    factors: np.ndarray,
    vectors: np.ndarray,
    alpha: float,
    offset: float,
    residual: bool,
    out: np.ndarray,
    start: int,
    stop: int,
) -> None:
    """Add one block's share of the *other* side's CG products into ``out`` (in place).

    The block's rows ``start..stop-1`` are the source side of a half-step (users, for
    the item half) with column indices into the destination rows (items), and
    ``vectors`` holds one ``(k,)`` vector per destination row. For every observed entry
    ``(u, i)`` with confidence ``C_ui = offset + alpha * r``::

        residual=False:  out[i] += (C_ui - 1) (x_u . v_i) x_u        (a share of A_i v_i)
        residual=True:   out[i] += (C_ui - (C_ui - 1) (x_u . v_i)) x_u
                                       (a share of b_i - (A_i - Y^T Y - lam_i I) v_i)

    Summed over the source blocks these are the sums over ``obs(i)`` that
    :func:`solve_rows_cg_parts` forms row by row, so the destination's CG runs without
    any source row leaving its block: only ``vectors`` and ``out``, one ``k``-vector per
    destination row, move.
    """
    k = factors.shape[1]
    for row in range(start, stop):
        lo = indptr[row]
        hi = indptr[row + 1]
        if hi == lo:
            continue
        for j in range(lo, hi):
            i = indices[j]
            c = np.float32(offset + alpha * data[j])
            dot = np.float32(0.0)
            for q in range(k):
                dot += factors[row, q] * vectors[i, q]
            w = (c - (c - np.float32(1.0)) * dot) if residual else (c - np.float32(1.0)) * dot
            for q in range(k):
                out[i, q] += w * factors[row, q]


@njit(nogil=True, cache=True)
def route_columns(
    indices: np.ndarray, n_cols: int, n_src_blocks: int, in_place: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renumber a block's global column indices into its *compact source* (one pass each).

    Global column ``g`` lives in source block ``g % R`` at local row ``g // R``. Source
    block ``in_place`` (or none when -1) is read whole where it is: its columns become
    their local rows ``0..n_in_place-1``. The columns of the other blocks follow,
    ordered by ``(source block, local row)``. Returned are the renumbered indices
    (``int32``, same order as ``indices``), the referenced local rows of every other
    source block concatenated (``int64``) and the offsets of each block's run in them
    (``R + 1``; block ``in_place`` has an empty run). A mark array over the columns
    replaces a sort: ``O(nnz + n_cols)`` time and ``4 n_cols`` bytes.
    """
    r = n_src_blocks
    per_block = (n_cols + r - 1) // r
    n_in_place = 0
    if in_place >= 0:
        n_in_place = max(0, (n_cols - in_place + r - 1) // r)
    position = np.full(r * per_block, -1, dtype=np.int32)
    for e in range(indices.shape[0]):
        g = indices[e]
        position[(g % r) * per_block + g // r] = 0
    offsets = np.zeros(r + 1, dtype=np.int64)
    count = 0
    for s in range(r):
        if s != in_place:
            base = s * per_block
            for local in range(per_block):
                if position[base + local] == 0:
                    position[base + local] = count
                    count += 1
        offsets[s + 1] = count
    rows = np.empty(count, dtype=np.int64)
    for s in range(r):
        if s == in_place:
            continue
        base = s * per_block
        for local in range(per_block):
            p = position[base + local]
            if p >= 0:
                rows[p] = local
    compact = np.empty(indices.shape[0], dtype=np.int32)
    for e in range(indices.shape[0]):
        g = indices[e]
        if g % r == in_place:
            compact[e] = g // r
        else:
            compact[e] = n_in_place + position[(g % r) * per_block + g // r]
    return compact, rows, offsets


@njit(nogil=True, cache=True)
def solve_rows_cholesky(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    src: np.ndarray,
    gram: np.ndarray,
    dst: np.ndarray,
    regularization: float,
    count_power: float,
    alpha: float,
    offset: float,
    start: int,
    stop: int,
) -> int:
    """:func:`solve_rows_cholesky_parts` over one source matrix ``src``."""
    rest = np.empty((0, src.shape[1]), dtype=src.dtype)
    return solve_rows_cholesky_parts(
        indptr, indices, data, src, rest, gram, dst,
        regularization, count_power, alpha, offset, start, stop,
    )  # fmt: skip


@njit(nogil=True, cache=True)
def solve_rows_cg(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    src: np.ndarray,
    gram: np.ndarray,
    dst: np.ndarray,
    regularization: float,
    count_power: float,
    alpha: float,
    offset: float,
    cg_steps: int,
    start: int,
    stop: int,
) -> None:
    """:func:`solve_rows_cg_parts` over one source matrix ``src``."""
    rest = np.empty((0, src.shape[1]), dtype=src.dtype)
    solve_rows_cg_parts(
        indptr, indices, data, src, rest, gram, dst,
        regularization, count_power, alpha, offset, cg_steps, start, stop,
    )  # fmt: skip


@njit(nogil=True, cache=True)
def objective_rows(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    src: np.ndarray,
    gram: np.ndarray,
    dst: np.ndarray,
    regularization: float,
    count_power: float,
    alpha: float,
    offset: float,
) -> tuple[float, float]:
    """:func:`objective_rows_parts` over one source matrix ``src``."""
    rest = np.empty((0, src.shape[1]), dtype=src.dtype)
    return objective_rows_parts(
        indptr, indices, data, src, rest, gram, dst,
        regularization, count_power, alpha, offset,
    )  # fmt: skip
