"""Approximate top-k on the workers: an inner-product index over the candidate vectors.

The exact path (:mod:`mfdask.engine.topk`) scores every query row against every
candidate: ``users x items x factors`` multiply-adds and a pass over ``users x items``
scores, which at a million users and a hundred thousand items is most of a batch job.
With ``method="ann"`` the candidates (item score vectors, biases folded in as the exact
path does; unit vectors for similar items, so that inner product is cosine) go into a
faiss index once, in one task on one worker; the serialized index (about the size of the
vectors) travels to each worker once, as any Dask input does, and every block task
queries it instead of scoring all candidates:

1. Each query row ``r`` asks the index for ``k_r = n + s_r`` candidates, ``s_r`` being
   the number of columns it must drop (seen items, or the item itself): even if every
   excluded column is among them, ``n`` remain. Rows are grouped by ``k_r`` rounded up
   to a power of two, one index search per group.
2. :func:`mfdask.kernels.ann.rerank_candidates` recomputes each candidate's score as the
   exact dot product, drops the excluded columns and keeps the ``n`` best (best first,
   ties to the lower column, ``-1`` padding): the exact path's answer restricted to the
   candidates, with the exact path's scores.
3. A row whose query vector is zero scores every column 0, so the exact answer is its
   lowest unexcluded columns: its candidates are its lowest ``k_r`` columns, not an index
   search (the index cannot rank ties).
4. Rows that need more than ``max_fetch`` candidates (a user who has seen most of the
   catalogue) and rows the candidates could not fill while unseen items remain are
   scored exactly (:func:`mfdask.recommend.top_k_of_scores`), so such a user still gets
   ``n`` unseen items, or all that exist.

Maximum inner product search is reduced to nearest-neighbour search first
(:func:`augment_items`: one extra coordinate makes every item the same length), so every
index below is a Euclidean one over ``f + 1`` dimensions; the order it finds is the
inner-product order, and the final scores are the exact dot products anyway. Indexes
(``index=``):

- ``"ivf"`` (default): ``IndexIVFFlat``, ``nlist`` inverted lists (default
  ``4 sqrt(n_items)``, at most ``n_items / 39`` so that k-means has enough points per
  centroid), ``nprobe`` of them probed per query (default: lists holding about
  :data:`PROBE_ITEMS` ``* sqrt(n_items)`` items). Distances inside the probed lists are
  exact, so recall depends on which lists are probed only; with ``nprobe >= nlist`` the
  search is exhaustive.
- ``"hnsw"``: ``IndexHNSWFlat`` (``hnsw_m`` links per node, ``ef_construction``,
  ``ef_search``).
- ``"flat"``: ``IndexFlatL2``, exhaustive (the exact answer, through faiss).

faiss is an optional dependency: ``pip install 'mfdask[ann]'`` (faiss-cpu). Each search
runs on ``threads`` OpenMP threads (default 1: the worker's Dask threads are the
parallelism, as for numba and BLAS elsewhere).
"""

from __future__ import annotations

import math
import threading
import weakref
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import scipy.sparse as sp

from mfdask.kernels.ann import rerank_candidates
from mfdask.recommend import DEFAULT_CHUNK_CELLS, chunk_rows, top_k_of_scores

EXTRA = "mfdask[ann]"
"""The optional extra that installs faiss."""

METHODS = ("exact", "ann", "auto")

INDEXES = ("ivf", "hnsw", "flat")

PROBE_ITEMS = 16
"""Default IVF search: probe lists holding about ``PROBE_ITEMS * sqrt(n_items)`` items.

Chosen from the measured trade-off curves (``python -m benchmarks ann``): recall@10
against the exact lists reaches 0.95 at about 13 sqrt(n) items probed on ML-1M's 3,706
items (24 of 95 lists: 0.977, 16: 0.938) and on the synthetic 100k-item catalogue
(48 of 1,265 lists: 0.99, 32: 0.92); 16 leaves a margin. The share of the catalogue
searched, ``16 / sqrt(n)``, falls as the catalogue grows: 26% at 3,706 items, 5% at
100,000, 1.6% at a million.
"""

AUTO_MIN_ITEMS = 20_000
"""``method="auto"`` uses the index from this many candidates on (measured crossover)."""

ANN_ROWS = 16_384
"""Query rows per index search on a worker (memory: rows x fetched candidates)."""


def import_faiss() -> Any:
    """``faiss``, or an ImportError that names the extra to install."""
    try:
        import faiss
    except ImportError as exc:
        raise ImportError(
            f"method='ann' needs faiss, which is not installed here: "
            f"pip install '{EXTRA}' (it brings faiss-cpu), or use method='exact'"
        ) from exc
    return faiss


def faiss_available() -> bool:
    try:
        import_faiss()
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class AnnParams:
    """Settings of the approximate path, resolved for one catalogue size.

    Attributes
    ----------
    index : str
        ``"ivf"``, ``"hnsw"`` or ``"flat"``.
    nlist : int
        IVF: inverted lists (k-means centroids).
    nprobe : int
        IVF: lists searched per query.
    hnsw_m : int
        HNSW: links per node.
    ef_construction : int
        HNSW: candidate list size while building.
    ef_search : int
        HNSW: candidate list size while searching (raised to the candidates fetched).
    max_fetch : int
        Rows needing more candidates than this (``n`` plus their excluded items) are
        scored exactly.
    threads : int
        OpenMP threads per build or search.
    """

    index: str = "ivf"
    nlist: int = 0
    nprobe: int = 0
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    max_fetch: int = 1024
    threads: int = 1

    def as_dict(self) -> dict[str, Any]:
        """The parameters that matter for this index (what the manifest records)."""
        d = asdict(self)
        if self.index != "ivf":
            d.pop("nlist")
            d.pop("nprobe")
        if self.index != "hnsw":
            d.pop("hnsw_m")
            d.pop("ef_construction")
            d.pop("ef_search")
        return d


_OPTION_NAMES = tuple(f.name for f in fields(AnnParams))


def default_nlist(n_items: int) -> int:
    """``4 sqrt(n_items)`` lists, at most ``n_items // 39`` (k-means' points per centroid)."""
    return max(1, min(round(4 * math.sqrt(max(n_items, 1))), n_items // 39))


def default_nprobe(nlist: int, n_items: int) -> int:
    """Lists holding about :data:`PROBE_ITEMS` ``* sqrt(n_items)`` items, at most all."""
    wanted = PROBE_ITEMS * math.sqrt(max(n_items, 1)) * nlist / max(n_items, 1)
    return max(1, min(nlist, math.ceil(wanted)))


def ann_params(n_items: int, **options: Any) -> AnnParams:
    """Check ``options`` and fill in the defaults for a catalogue of ``n_items``.

    Raises
    ------
    ValueError
        An option that is not a field of :class:`AnnParams`, an unknown index or a value
        out of range.
    """
    unknown = sorted(set(options) - set(_OPTION_NAMES))
    if unknown:
        raise ValueError(f"unknown ANN option(s) {unknown}; valid: {', '.join(_OPTION_NAMES)}")
    index = options.get("index", "ivf")
    if index not in INDEXES:
        raise ValueError(f"ANN index must be one of {INDEXES}, got {index!r}")
    for name, value in options.items():
        if name == "index":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"ANN option {name} must be a positive integer, got {value!r}")
    given: dict[str, Any] = {k: (v if k == "index" else int(v)) for k, v in options.items()}
    params = replace(AnnParams(), **given)
    if index == "ivf":
        nlist = params.nlist or default_nlist(n_items)
        nlist = min(nlist, max(n_items, 1))
        nprobe = min(params.nprobe or default_nprobe(nlist, n_items), nlist)
        params = replace(params, nlist=nlist, nprobe=nprobe)
    return params


def resolve_method(method: str, n_items: int, options: dict[str, Any]) -> AnnParams | None:
    """The :class:`AnnParams` for ``method`` (None: the exact path).

    ``"auto"`` takes the index when the catalogue has at least :data:`AUTO_MIN_ITEMS`
    candidates and faiss is installed, the exact path otherwise. ``"ann"`` without faiss
    fails here, on the client, before any work.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "exact":
        if options:
            raise ValueError(
                f"ANN options {sorted(options)} given with method='exact': "
                "pass method='ann' (or 'auto') to use them"
            )
        return None
    params = ann_params(n_items, **options)
    if method == "auto" and (n_items < AUTO_MIN_ITEMS or not faiss_available()):
        return None
    import_faiss()
    return params


def build_index(vectors: np.ndarray, params: AnnParams) -> np.ndarray:
    """Build the index over ``vectors`` ``(n_items, f) float32``; serialized, ``uint8``.

    Runs once per output, in a task (or on the client); the bytes are what the block
    tasks receive (:func:`load_index`).
    """
    faiss = import_faiss()
    faiss.omp_set_num_threads(params.threads)
    x = augment_items(vectors)
    n, d = x.shape
    if params.index == "flat":
        index = faiss.IndexFlatL2(d)
    elif params.index == "hnsw":
        index = faiss.IndexHNSWFlat(d, params.hnsw_m, faiss.METRIC_L2)
        index.hnsw.efConstruction = params.ef_construction
    else:
        quantizer = faiss.IndexFlatL2(d)
        index = faiss.IndexIVFFlat(quantizer, d, params.nlist, faiss.METRIC_L2)
        index.cp.seed = 0  # k-means draws: the same index for the same vectors
        if params.nlist > 1:
            index.train(x)
        else:
            quantizer.add(np.zeros((1, d), np.float32))
            index.is_trained = True
    if n:
        index.add(x)
    return faiss.serialize_index(index)


def augment_items(vectors: np.ndarray) -> np.ndarray:
    """``[y_i, sqrt(M^2 - |y_i|^2)]``, ``M = max_i |y_i|``: inner product to nearest neighbour.

    Every augmented item has norm ``M`` and a query ``[q, 0]`` has
    ``|[q, 0] - y'_i|^2 = |q|^2 + M^2 - 2 q.y_i``, so the nearest items by Euclidean
    distance are those with the largest inner product (Bachrach et al., RecSys 2014).
    Clustering the raw vectors by inner product does poorly on factors whose norms
    spread over two orders of magnitude (popular items long, rare ones short, as ALS
    makes them): recall@10 0.45 at ``nprobe`` 32 of 1265 lists on the synthetic 1M x 100k
    set, against 0.99 after this transform.
    """
    x = np.asarray(vectors, dtype=np.float32)
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    top = float(sq.max()) if len(sq) else 0.0
    extra = np.sqrt(np.maximum(top - sq, 0.0)).astype(np.float32)
    return np.ascontiguousarray(np.hstack([x, extra[:, None]]), dtype=np.float32)


def augment_queries(query: np.ndarray) -> np.ndarray:
    """``[q, 0]``: the query side of :func:`augment_items`."""
    out = np.zeros((query.shape[0], query.shape[1] + 1), dtype=np.float32)
    out[:, :-1] = query
    return out


def load_index(blob: np.ndarray) -> Any:
    """The index :func:`build_index` serialized, deserialized once per process.

    The block tasks of one output on one worker all receive the same array (Dask keeps
    one copy of a task's input on each worker), so the index it holds is kept, keyed by
    that array, for as long as the array lives: deserializing 100k items at 64 factors
    costs about 0.1 s, once per worker instead of once per block.
    """
    with _CACHE_LOCK:
        for key in [k for k, (ref, _) in _CACHE.items() if ref() is None]:
            del _CACHE[key]
        hit = _CACHE.get(id(blob))
        if hit is not None and hit[0]() is blob:
            return hit[1]
    faiss = import_faiss()
    index = faiss.deserialize_index(np.asarray(blob, dtype=np.uint8))
    with _CACHE_LOCK:
        _CACHE[id(blob)] = (weakref.ref(blob), index)
    return index


_CACHE: dict[int, tuple[weakref.ref, Any]] = {}
_CACHE_LOCK = threading.Lock()


def _search_params(faiss: Any, params: AnnParams, k: int) -> Any:
    if params.index == "ivf":
        return faiss.SearchParametersIVF(nprobe=params.nprobe)
    if params.index == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=max(params.ef_search, k))
    return None


def _exact_rows(
    query: np.ndarray,
    candidates: np.ndarray,
    exclude: sp.csr_matrix | None,
    rows: np.ndarray,
    n: int,
    out_idx: np.ndarray,
    out_val: np.ndarray,
    chunk_cells: int,
) -> None:
    """Score ``rows`` exactly, in chunks of at most ``chunk_cells`` scores."""
    step = chunk_rows(candidates.shape[0], chunk_cells)
    for start in range(0, len(rows), step):
        sel = rows[start : start + step]
        scores = np.asarray(query[sel] @ candidates.T, dtype=np.float32)
        mask = exclude[sel] if exclude is not None else None
        idx, val = top_k_of_scores(scores, n, mask)
        out_idx[sel] = idx
        out_val[sel] = val


def ann_top_k(
    query: np.ndarray,
    candidates: np.ndarray,
    exclude: sp.csr_matrix | None,
    n: int,
    index: Any,
    params: AnnParams,
    chunk_cells: int = DEFAULT_CHUNK_CELLS,
) -> tuple[np.ndarray, np.ndarray]:
    """The approximate twin of ``top_k_of_scores(query @ candidates.T, n, exclude)``.

    Parameters
    ----------
    query : (m, f) float32
        Score vectors of the rows (users; unit item vectors for similar items).
    candidates : (n_cols, f) float32
        Score vectors of the candidates, biases folded in: what ``index`` was built over.
    exclude : (m, n_cols) CSR, optional
        Columns to drop per row (seen items, the query item itself).
    n : int
        Columns to keep (clipped to ``n_cols``).
    index : faiss index or serialized ``uint8`` array
        From :func:`build_index` over ``candidates``.
    params : AnnParams
    chunk_cells : int
        Bound on the score matrix of the rows scored exactly.

    Returns
    -------
    indices : (m, min(n, n_cols)) int64
        Columns by descending exact score (equal scores: lower column first); ``-1``
        where fewer unexcluded columns exist.
    values : (m, min(n, n_cols)) float32
        Their scores (the exact dot products); ``-inf`` where the index is ``-1``.
    """
    faiss = import_faiss()
    if isinstance(index, np.ndarray):
        index = load_index(index)
    faiss.omp_set_num_threads(params.threads)
    query = np.ascontiguousarray(query, dtype=np.float32)
    candidates = np.ascontiguousarray(candidates, dtype=np.float32)
    m = query.shape[0]
    n_cols = candidates.shape[0]
    k = min(n, n_cols)
    out_idx = np.full((m, k), -1, dtype=np.int64)
    out_val = np.full((m, k), -np.inf, dtype=np.float32)
    if m == 0 or k == 0:
        return out_idx, out_val
    if exclude is not None:
        exclude = exclude.tocsr()
        exclude.sum_duplicates()
        indptr = exclude.indptr.astype(np.int64, copy=False)
        indices = exclude.indices.astype(np.int64, copy=False)
    else:
        indptr = np.zeros(m + 1, dtype=np.int64)
        indices = np.empty(0, dtype=np.int64)
    # Candidates each row needs so that n survive its exclusions, rounded up to a power
    # of two (one search per distinct size; at least 2n, which costs the index nothing).
    need = k + np.diff(indptr)
    fetch = np.maximum(2 * k, 2 ** np.ceil(np.log2(np.maximum(need, 1))).astype(np.int64))
    fetch = np.minimum(fetch, n_cols)
    # A zero query vector scores every column 0: the exact path's answer is then its
    # lowest unexcluded columns, which no index search finds, but which are among its
    # lowest k + s_r columns: those are its candidates (re-ranked like any others).
    zero = ~np.any(query != 0, axis=1)
    too_many = (need > params.max_fetch) | (fetch >= n_cols)
    short = np.zeros(m, dtype=bool)
    mark = np.zeros(n_cols, dtype=np.int8)
    for size in np.unique(fetch[~too_many]):
        rows = np.flatnonzero((fetch == size) & ~too_many)
        for start in range(0, len(rows), ANN_ROWS):
            sel = rows[start : start + ANN_ROWS]
            q = query[sel]
            cand = np.empty((len(sel), int(size)), dtype=np.int64)
            flat = zero[sel]
            searched = np.flatnonzero(~flat)
            if len(searched):
                _, cand[searched] = index.search(
                    augment_queries(q[searched]),
                    int(size),
                    params=_search_params(faiss, params, int(size)),
                )
            cand[flat] = np.arange(int(size), dtype=np.int64)
            if exclude is not None:
                sub = exclude[sel]
                sub_ptr = sub.indptr.astype(np.int64, copy=False)
                sub_idx = sub.indices.astype(np.int64, copy=False)
            else:
                sub_ptr = np.zeros(len(sel) + 1, dtype=np.int64)
                sub_idx = indices
            idx = np.empty((len(sel), k), dtype=np.int64)
            val = np.empty((len(sel), k), dtype=np.float32)
            sub_short = np.zeros(len(sel), dtype=bool)
            rerank_candidates(q, candidates, cand, sub_ptr, sub_idx, k, mark, idx, val, sub_short)
            out_idx[sel] = idx
            out_val[sel] = val
            short[sel] = sub_short
    exact = np.flatnonzero(too_many | short)
    if len(exact):
        _exact_rows(query, candidates, exclude, exact, k, out_idx, out_val, chunk_cells)
    return out_idx, out_val
