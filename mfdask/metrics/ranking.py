"""Ranking metrics of top-k lists against held-out relevant items, vectorised over users.

Every function takes a whole block of users at once: a ranked recommendation matrix
``recs`` ``(m, K) int64`` of item indices, best first, padded with ``-1`` where fewer than
``K`` items could be recommended (as :func:`mfdask.recommend.top_k_of_scores` returns it),
and the relevant items as a ``(m, n_items)`` sparse matrix ``relevant`` (the test
positives; every stored non-zero counts, relevance is binary). No Python loop runs per
user: hits are found with one ``searchsorted`` over row-major keys, the per-user sums are
row reductions.

Notation for user ``u``: ``R_u`` the relevant items, ``L_u`` the first ``k`` entries of the
list, ``hit_j = 1`` if the item at rank ``j`` (0-based) is in ``R_u``, ``h_u = Σ_j hit_j``.

================== ======================================================= =====================
name               per user ``u``                                          the same as
================== ======================================================= =====================
precision          ``h_u / k`` (``k`` even for a list shorter than ``k``)  Spark ``precisionAt``
recall             ``h_u / |R_u|``                                         Spark ``recallAt``
ndcg               ``DCG / IDCG``, ``DCG = Σ_j hit_j / log2(j + 2)``,      implicit ``ndcg``,
                   IDCG the DCG of ``min(k, |R_u|)`` hits at the top       Spark ``ndcgAt``
map                ``AP = Σ_j hit_j · P@(j+1) / min(k, |R_u|)``            implicit ``map``,
                                                                           Spark ``meanAverage
                                                                           PrecisionAt``
hit_rate           ``1`` if ``h_u > 0`` else ``0``
auc                exact AUC over the full score row, see :func:`auc`
implicit_precision ``Σ_u h_u / Σ_u min(k, |R_u|)``: a ratio of totals,     implicit
                   not a mean over users                                   ``precision``
implicit_auc       implicit's top-k estimate of the AUC, see                implicit ``auc``
                   :func:`implicit_auc_at_k`
coverage           distinct items in all lists / ``n_items``
================== ======================================================= =====================

``precision`` is the textbook P@k (also LensKit's and Spark's). ``implicit`` reports under
the name "precision" the number of hits over the number of hits a perfect list could have
had (``min(k, |R_u|)``), summed over users before dividing: it equals P@k only when every
user has at least ``k`` relevant items. Both are reported so that numbers can be compared
with implicit's ``ranking_metrics_at_k`` as well as with papers that use P@k.

Users with no relevant item (``R_u`` empty) have no defined recall, NDCG or AP: every
per-user function returns ``NaN`` for them and :class:`RankingSums` leaves them out of
every mean (and out of coverage), as implicit and Spark do.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import scipy.sparse as sp

from mfdask.kernels.auc import BY_POSITIVES_UP_TO, mann_whitney_rows

__all__ = [
    "RankingSums",
    "auc",
    "average_precision_at_k",
    "catalogue_coverage",
    "hit_rate_at_k",
    "hits_at_k",
    "implicit_auc_at_k",
    "implicit_precision_at_k",
    "ndcg_at_k",
    "precision_at_k",
    "ranking_metrics",
    "ranking_sums",
    "recall_at_k",
]


# --------------------------------------------------------------------------- validation


def _as_binary_csr(relevant: sp.spmatrix | sp.sparray, m: int, name: str) -> sp.csr_matrix:
    """``relevant`` as a canonical CSR (sorted, no duplicates, no explicit zeros), ``m`` rows."""
    if not sp.issparse(relevant):
        raise TypeError(f"{name} must be a scipy sparse matrix, got {type(relevant).__name__}")
    if relevant.shape[0] != m:
        raise ValueError(f"{name} has {relevant.shape[0]} rows but there are {m} users")
    out = sp.csr_matrix(relevant, copy=True)
    out.eliminate_zeros()
    out.sum_duplicates()  # also sorts the indices of each row
    out.data = np.ones(len(out.indices), dtype=np.int8)
    return out


def _check_recs(recs: np.ndarray, n_items: int) -> np.ndarray:
    recs = np.asarray(recs)
    if recs.ndim != 2 or not np.issubdtype(recs.dtype, np.integer):
        raise ValueError(f"recs must be a 2-D integer array (m, k), got {recs.dtype} {recs.shape}")
    if recs.size and (recs.min() < -1 or recs.max() >= n_items):
        raise ValueError(
            f"recs holds item indices outside -1..{n_items - 1} "
            f"(min {recs.min()}, max {recs.max()}): -1 is the only padding value"
        )
    return recs.astype(np.int64, copy=False)


def _resolve_k(recs: np.ndarray, k: int | None) -> int:
    if k is None:
        k = recs.shape[1]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


# --------------------------------------------------------------------------- hits


def hits_at_k(
    recs: np.ndarray, relevant: sp.spmatrix | sp.sparray, k: int | None = None
) -> np.ndarray:
    """Which of the first ``k`` recommendations of each user are relevant.

    Parameters
    ----------
    recs : (m, K) int
        Item indices, best first, ``-1`` as padding.
    relevant : (m, n_items) sparse
        Relevant items per user (stored non-zeros).
    k : int, optional
        Cut-off; defaults to ``K``. A list shorter than ``k`` is padded with misses.

    Returns
    -------
    (m, k) bool
    """
    recs = np.asarray(recs)
    if recs.ndim != 2:
        raise ValueError(f"recs must be a 2-D integer array (m, k), got shape {recs.shape}")
    m = recs.shape[0]
    rel = _as_binary_csr(relevant, m, "relevant")
    recs = _check_recs(recs, rel.shape[1])
    k = _resolve_k(recs, k)
    recs = recs[:, :k]
    if recs.shape[1] < k:
        pad = np.full((m, k - recs.shape[1]), -1, dtype=np.int64)
        recs = np.hstack([recs, pad])
    n_items = rel.shape[1]
    # Row-major keys u * n_items + item: the CSR's keys are already sorted, so one
    # searchsorted tests every (user, item) pair of the lists at once.
    rel_rows = np.repeat(np.arange(m, dtype=np.int64), np.diff(rel.indptr))
    rel_keys = rel_rows * n_items + rel.indices.astype(np.int64)
    keys = np.arange(m, dtype=np.int64)[:, None] * n_items + recs
    if not len(rel_keys):
        return np.zeros(recs.shape, dtype=bool)
    pos = np.searchsorted(rel_keys, keys)
    found = rel_keys[np.minimum(pos, len(rel_keys) - 1)] == keys
    return found & (recs >= 0)


def _relevant_counts(relevant: sp.spmatrix | sp.sparray, m: int) -> np.ndarray:
    return np.diff(_as_binary_csr(relevant, m, "relevant").indptr).astype(np.int64)


def _discounts(k: int) -> np.ndarray:
    """``1 / log2(j + 2)`` for ranks ``j = 0..k-1`` (the DCG position discount)."""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def _per_user(hits: np.ndarray, n_rel: np.ndarray) -> dict[str, np.ndarray]:
    """Every per-user ranking metric from the hit matrix; NaN where ``n_rel == 0``."""
    m, k = hits.shape
    valid = n_rel > 0
    h = hits.sum(axis=1).astype(np.float64)
    ideal = np.minimum(n_rel, k)
    disc = _discounts(k)
    # IDCG of min(k, |R|) hits at the top: prefix sums of the discounts, 0 for no hit.
    idcg = np.concatenate([[0.0], np.cumsum(disc)])[ideal]
    dcg = hits @ disc
    # AP: precision at every hit's rank, summed, over min(k, |R|).
    prec_at_rank = np.cumsum(hits, axis=1) / np.arange(1, k + 1, dtype=np.float64)
    ap_num = (prec_at_rank * hits).sum(axis=1)
    nan = np.full(m, np.nan)
    safe_rel = np.where(valid, n_rel, 1)
    safe_ideal = np.where(valid, ideal, 1)
    return {
        "hits": np.where(valid, h, nan),
        "precision": np.where(valid, h / k, nan),
        "recall": np.where(valid, h / safe_rel, nan),
        "ndcg": np.where(valid, dcg / np.where(valid, idcg, 1.0), nan),
        "ap": np.where(valid, ap_num / safe_ideal, nan),
        "hit_rate": np.where(valid, (h > 0).astype(np.float64), nan),
        "ideal": np.where(valid, ideal.astype(np.float64), nan),
    }


def _metric(recs, relevant, k, name):
    hits = hits_at_k(recs, relevant, k)
    return _per_user(hits, _relevant_counts(relevant, hits.shape[0]))[name]


def precision_at_k(
    recs: np.ndarray, relevant: sp.spmatrix | sp.sparray, k: int | None = None
) -> np.ndarray:
    """P@k per user: hits among the first ``k`` over ``k``; ``(m,) float64``, NaN if no relevant.

    Divides by ``k`` even when the list is shorter (Spark's ``precisionAt``); for implicit's
    "precision" see :func:`implicit_precision_at_k`.
    """
    return _metric(recs, relevant, k, "precision")


def recall_at_k(
    recs: np.ndarray, relevant: sp.spmatrix | sp.sparray, k: int | None = None
) -> np.ndarray:
    """R@k per user: hits among the first ``k`` over ``|R_u|``; NaN if no relevant item."""
    return _metric(recs, relevant, k, "recall")


def ndcg_at_k(
    recs: np.ndarray, relevant: sp.spmatrix | sp.sparray, k: int | None = None
) -> np.ndarray:
    """NDCG@k per user with binary gains (Järvelin & Kekäläinen 2002).

    ``DCG = Σ_{j<k} hit_j / log2(j + 2)``; the ideal DCG puts ``min(k, |R_u|)`` hits at the
    top, as implicit and Spark do. NaN for a user with no relevant item.
    """
    return _metric(recs, relevant, k, "ndcg")


def average_precision_at_k(
    recs: np.ndarray, relevant: sp.spmatrix | sp.sparray, k: int | None = None
) -> np.ndarray:
    """AP@k per user: ``Σ_j hit_j · P@(j+1) / min(k, |R_u|)``; MAP@k is its mean over users.

    Normalised by ``min(k, |R_u|)`` (implicit, Spark), so a perfect list scores 1 even when
    the user has more than ``k`` relevant items. NaN for a user with no relevant item.
    """
    return _metric(recs, relevant, k, "ap")


def hit_rate_at_k(
    recs: np.ndarray, relevant: sp.spmatrix | sp.sparray, k: int | None = None
) -> np.ndarray:
    """1.0 if any of the first ``k`` items is relevant, else 0.0; NaN with no relevant item."""
    return _metric(recs, relevant, k, "hit_rate")


def implicit_precision_at_k(
    recs: np.ndarray, relevant: sp.spmatrix | sp.sparray, k: int | None = None
) -> float:
    """What implicit's ``ranking_metrics_at_k`` calls precision: ``Σ_u h_u / Σ_u min(k, |R_u|)``.

    A ratio of totals over users with a relevant item (not a mean of per-user values);
    NaN when no user has one.
    """
    hits = hits_at_k(recs, relevant, k)
    n_rel = _relevant_counts(relevant, hits.shape[0])
    valid = n_rel > 0
    denom = np.minimum(n_rel[valid], hits.shape[1]).sum()
    return float(hits[valid].sum() / denom) if denom else float("nan")


def implicit_auc_at_k(
    recs: np.ndarray, relevant: sp.spmatrix | sp.sparray, n_items: int, k: int | None = None
) -> np.ndarray:
    """implicit's "AUC": the AUC estimated from the top-``k`` list only, per user.

    With ``P = |R_u|`` positives and ``N = n_items - P`` negatives (implicit counts the
    training items as negatives), each miss at rank ``j`` is a negative placed below the
    hits before it; the ``N - misses`` negatives outside the list are assumed to sit below
    every hit and, on average, below half of the ``P - h_u`` positives outside it::

        AUC_u = (Σ_{j: miss} h_{<j} + (h_u + P) / 2 · (N - misses)) / (P · N)

    Padding (``-1``) counts as a miss, as in implicit. NaN where ``P == 0`` or ``N == 0``.
    Prefer :func:`auc`, which is exact; this exists to compare with implicit's numbers.
    """
    hits = hits_at_k(recs, relevant, k)
    n_pos = _relevant_counts(relevant, hits.shape[0]).astype(np.float64)
    n_neg = n_items - n_pos
    miss = ~hits
    before = np.cumsum(hits, axis=1)  # at a miss, the number of hits ranked above it
    top = (before * miss).sum(axis=1)
    h = hits.sum(axis=1)
    misses = miss.sum(axis=1)
    num = top + (h + n_pos) / 2.0 * (n_neg - misses)
    ok = (n_pos > 0) & (n_neg > 0)
    return np.where(ok, num / np.where(ok, n_pos * n_neg, 1.0), np.nan)


def catalogue_coverage(recs: np.ndarray, n_items: int) -> float:
    """Distinct items recommended to anyone, over ``n_items`` (padding ignored)."""
    if n_items < 1:
        raise ValueError(f"n_items must be positive, got {n_items!r}")
    recs = _check_recs(recs, n_items)
    return float(np.unique(recs[recs >= 0]).size / n_items)


# --------------------------------------------------------------------------- AUC


def _order_keys(x: np.ndarray) -> np.ndarray:
    """Map float32 values to uint32 keys with the same order (no NaN; -0.0 == +0.0).

    IEEE-754 bits order positive floats like unsigned integers and negative ones in
    reverse, so negatives get every bit flipped and positives only the sign bit: an
    arithmetic shift of the signed view makes that mask without a branch.
    """
    x = np.ascontiguousarray(x, dtype=np.float32) + np.float32(0.0)  # -0.0 -> +0.0
    signed = x.view(np.int32)
    return (signed ^ ((signed >> 31) | np.int32(-(2**31)))).view(np.uint32)


def auc(
    scores: np.ndarray,
    relevant: sp.spmatrix | sp.sparray,
    exclude: sp.spmatrix | sp.sparray | None = None,
) -> np.ndarray:
    """Exact per-user AUC from the full score row.

    For user ``u`` the positives are ``P_u = R_u`` and the negatives ``N_u`` every item
    neither in ``R_u`` nor in ``exclude`` (the training items: they are neither right nor
    wrong to rank high). The AUC is the fraction of (positive, negative) pairs ordered
    right, a tie counting one half (the Mann-Whitney statistic)::

        AUC_u = (1 / (|P_u| |N_u|)) Σ_{p ∈ P_u} Σ_{n ∈ N_u} ([s_p > s_n] + ½ [s_p = s_n])

    A user with few positives (the usual held-out case) is counted by one vectorised
    pass over the row per positive (:func:`mfdask.kernels.auc.mann_whitney_rows`), a
    user with many through mid-ranks after one sort of the row; scores are compared as
    order-preserving float32 keys (``-0.0`` ties ``+0.0``) either way.

    Differences from implicit: implicit's ``auc`` is an estimate from the top-k list that
    counts training items as negatives (:func:`implicit_auc_at_k`); this is exact.

    Parameters
    ----------
    scores : (m, n_items) float
        Scores, compared in float32 (the precision the models score in); must be finite.
    relevant : (m, n_items) sparse
        Positives per user.
    exclude : (m, n_items) sparse, optional
        Items that are neither positive nor negative (seen in training). An item that is
        both relevant and excluded counts as a positive.

    Returns
    -------
    (m,) float64
        NaN where a user has no positive or no negative.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (m, n_items), got shape {scores.shape}")
    m, n = scores.shape
    rel = _as_binary_csr(relevant, m, "relevant")
    if rel.shape[1] != n:
        raise ValueError(f"relevant has {rel.shape[1]} columns, scores {n}")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity: the model's factors are not finite")
    n_pos = np.diff(rel.indptr).astype(np.float64)
    ex = None
    if exclude is not None:
        ex = _as_binary_csr(exclude, m, "exclude")
        if ex.shape[1] != n:
            raise ValueError(f"exclude has {ex.shape[1]} columns, scores {n}")
        ex_indptr, ex_indices = ex.indptr.astype(np.int64), ex.indices.astype(np.int64)
    else:
        ex_indptr, ex_indices = np.zeros(m + 1, np.int64), np.zeros(0, np.int64)
    keys = _order_keys(scores)
    u_stat = np.zeros(m, dtype=np.float64)
    n_neg = np.zeros(m, dtype=np.int64)
    mann_whitney_rows(
        keys, rel.indptr.astype(np.int64), rel.indices.astype(np.int64),
        ex_indptr, ex_indices, u_stat, n_neg,
    )  # fmt: skip
    heavy = np.flatnonzero(n_pos > BY_POSITIVES_UP_TO)
    if len(heavy) == m:  # keys is ours: ranked in place
        u_stat = _u_by_ranks(keys, rel, ex)
    elif len(heavy):
        u_stat[heavy] = _u_by_ranks(keys[heavy], rel[heavy], ex[heavy] if ex is not None else None)
    ok = (n_pos > 0) & (n_neg > 0)
    return np.where(ok, u_stat / np.where(ok, n_pos * n_neg, 1.0), np.nan)


def _u_by_ranks(keys: np.ndarray, rel: sp.csr_matrix, ex: sp.csr_matrix | None) -> np.ndarray:
    """Mann-Whitney ``U`` per row through mid-ranks: one sort per row (many positives).

    ``keys`` is overwritten (excluded items).

    ``U_u = Σ_p rank(p) - |P_u|(|P_u| + 1) / 2`` where ranks run over ``P_u ∪ N_u`` in
    ascending order, ties taking their average rank. Excluded items get the largest key,
    so they rank above every candidate and change no candidate's rank; the row index in
    the high bits makes the row-wise sorted keys one sorted array, so a single
    ``searchsorted`` finds every positive's place within its own row.
    """
    m, n = keys.shape
    pr = np.repeat(np.arange(m, dtype=np.int64), np.diff(rel.indptr))
    pc = rel.indices.astype(np.int64)
    n_pos = np.diff(rel.indptr).astype(np.float64)
    pos_keys = keys[pr, pc]
    if ex is not None and ex.nnz:
        er = np.repeat(np.arange(m, dtype=np.int64), np.diff(ex.indptr))
        keys[er, ex.indices] = np.iinfo(np.uint32).max
        keys[pr, pc] = pos_keys  # positives stay positives
    high = np.arange(m, dtype=np.uint64)[:, None] << np.uint64(32)
    flat = (high | np.sort(keys, axis=1)).ravel()
    pk = (pr.astype(np.uint64) << np.uint64(32)) | pos_keys.astype(np.uint64)
    offset = pr * n
    below = np.searchsorted(flat, pk, side="left") - offset
    upto = np.searchsorted(flat, pk, side="right") - offset
    midrank = (below + upto + 1) / 2.0  # 1-based average rank of the tie group
    return np.bincount(pr, weights=midrank, minlength=m) - n_pos * (n_pos + 1) / 2.0


# --------------------------------------------------------------------------- sums


@dataclass
class RankingSums:
    """Additive per-user totals of a block of users; ``+`` merges blocks, :meth:`means` ends.

    Blocks of users are scored on different workers and only these sums travel back, so
    the means over all users are exact whatever the blocking. Sums run over users with at
    least one relevant item (``users``); the AUC sums over users that also have a negative.

    Attributes
    ----------
    k, n_items : int
        Cut-off and catalogue size (must agree when adding).
    users : int
        Users with at least one relevant item.
    precision, recall, ndcg, ap, hit_rate : float
        Sums of the per-user values.
    hits, ideal_hits : float
        ``Σ h_u`` and ``Σ min(k, |R_u|)`` (implicit's precision is their ratio).
    auc : float
        Sum of the exact per-user AUC over ``auc_users`` users.
    implicit_auc : float
        Sum of implicit's top-k AUC estimate over ``implicit_auc_users`` users.
    recommended : (n_items,) int64
        How often each item appears in the lists of the counted users.
    """

    k: int
    n_items: int
    users: int = 0
    precision: float = 0.0
    recall: float = 0.0
    ndcg: float = 0.0
    ap: float = 0.0
    hit_rate: float = 0.0
    hits: float = 0.0
    ideal_hits: float = 0.0
    auc: float = 0.0
    auc_users: int = 0
    implicit_auc: float = 0.0
    implicit_auc_users: int = 0
    recommended: np.ndarray = field(default=None, repr=False)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        if self.recommended is None:
            self.recommended = np.zeros(self.n_items, dtype=np.int64)

    def __add__(self, other: RankingSums) -> RankingSums:
        if (self.k, self.n_items) != (other.k, other.n_items):
            raise ValueError(
                f"cannot add ranking sums at k={other.k} over {other.n_items} items to "
                f"sums at k={self.k} over {self.n_items} items"
            )
        values = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in fields(self)
            if f.name not in ("k", "n_items")
        }
        return RankingSums(k=self.k, n_items=self.n_items, **values)

    def means(self) -> dict[str, float]:
        """The metrics (means over users; NaN when no user counted) and the user counts."""

        def mean(total: float, count: int) -> float:
            return float(total / count) if count else float("nan")

        return {
            "precision": mean(self.precision, self.users),
            "recall": mean(self.recall, self.users),
            "ndcg": mean(self.ndcg, self.users),
            "map": mean(self.ap, self.users),
            "hit_rate": mean(self.hit_rate, self.users),
            "auc": mean(self.auc, self.auc_users),
            "implicit_precision": float(self.hits / self.ideal_hits)
            if self.ideal_hits
            else float("nan"),
            "implicit_auc": mean(self.implicit_auc, self.implicit_auc_users),
            "coverage": float(np.count_nonzero(self.recommended) / self.n_items),
            "users": int(self.users),
            "auc_users": int(self.auc_users),
        }


def ranking_sums(
    recs: np.ndarray,
    relevant: sp.spmatrix | sp.sparray,
    *,
    k: int | None = None,
    auc_values: np.ndarray | None = None,
) -> RankingSums:
    """Totals of every ranking metric over the users of one block (see :class:`RankingSums`).

    Parameters
    ----------
    recs : (m, K) int
        Top-``K`` lists, ``-1`` padded.
    relevant : (m, n_items) sparse
        Relevant items per user; users without any are left out of every sum.
    k : int, optional
        Cut-off (default ``K``).
    auc_values : (m,) float, optional
        Per-user exact AUC from :func:`auc` (computed before top-k masks the scores);
        NaN entries are left out. Without it the AUC sums stay empty.
    """
    m = np.asarray(recs).shape[0]
    rel = _as_binary_csr(relevant, m, "relevant")
    hits = hits_at_k(recs, rel, k)
    k = hits.shape[1]
    n_rel = np.diff(rel.indptr).astype(np.int64)
    valid = n_rel > 0
    per = _per_user(hits, n_rel)
    iauc = implicit_auc_at_k(recs, rel, rel.shape[1], k)
    recs_v = _check_recs(recs, rel.shape[1])[valid, :k]
    listed = recs_v[recs_v >= 0]
    out = RankingSums(
        k=k,
        n_items=rel.shape[1],
        users=int(valid.sum()),
        precision=float(np.nansum(per["precision"])),
        recall=float(np.nansum(per["recall"])),
        ndcg=float(np.nansum(per["ndcg"])),
        ap=float(np.nansum(per["ap"])),
        hit_rate=float(np.nansum(per["hit_rate"])),
        hits=float(np.nansum(per["hits"])),
        ideal_hits=float(np.nansum(per["ideal"])),
        implicit_auc=float(np.nansum(iauc[valid])),
        implicit_auc_users=int(np.count_nonzero(~np.isnan(iauc[valid]))),
        recommended=np.bincount(listed, minlength=rel.shape[1]).astype(np.int64),
    )
    if auc_values is not None:
        a = np.asarray(auc_values, dtype=np.float64)
        if a.shape != (m,):
            raise ValueError(f"auc_values has shape {a.shape}, expected ({m},)")
        a = a[valid]
        out.auc = float(np.nansum(a))
        out.auc_users = int(np.count_nonzero(~np.isnan(a)))
    return out


def ranking_metrics(
    recs: np.ndarray,
    relevant: sp.spmatrix | sp.sparray,
    *,
    k: int | None = None,
    scores: np.ndarray | None = None,
    exclude: sp.spmatrix | sp.sparray | None = None,
) -> dict[str, float]:
    """All ranking metrics of one in-memory block of users (means over users with a relevant
    item); the AUC only when the full ``scores`` are given. See the module docstring."""
    auc_values = None if scores is None else auc(scores, relevant, exclude)
    return ranking_sums(recs, relevant, k=k, auc_values=auc_values).means()
