"""Approximate top-k (method="ann"): the exact answer where the index is exhaustive,
never a seen item, heavy users completed exactly, and a clear error without faiss."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import mfdask.models.registry as registry
from mfdask.cli import main
from mfdask.engine import ann
from mfdask.engine.topk import read_manifest
from mfdask.kernels.ann import rerank_candidates
from mfdask.models.topk import recommend_all, similar_items_all
from mfdask.recommend import top_k_of_scores
from tests.conftest import planted_ratings
from tests.fixed_model import FixedModel

needs_faiss = pytest.mark.skipif(
    not ann.faiss_available(), reason="faiss is not installed (pip install 'mfdask[ann]')"
)


def _rerank_twin(query, items, cand, exclude: sp.csr_matrix, n):
    """Obviously correct re-rank: unique unexcluded candidates by (-score, column)."""
    m = query.shape[0]
    idx = np.full((m, n), -1, np.int64)
    val = np.full((m, n), -np.inf, np.float32)
    short = np.zeros(m, bool)
    dense = exclude.toarray().astype(bool)
    for r in range(m):
        c = np.unique(cand[r][(cand[r] >= 0) & (cand[r] < len(items))])
        c = c[~dense[r, c]]
        s = np.array([np.float32(np.dot(query[r], items[j])) for j in c], np.float32)
        order = np.lexsort((c, -s))[:n]
        idx[r, : len(order)] = c[order]
        val[r, : len(order)] = s[order]
        short[r] = len(order) < n and len(order) < len(items) - dense[r].sum()
    return idx, val, short


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, 5),
    n_cols=st.integers(1, 30),
    n=st.integers(1, 12),
    kk=st.integers(1, 40),
    density=st.floats(0, 1),
    seed=st.integers(0, 2**16),
)
def test_rerank_kernel_matches_the_twin(m, n_cols, n, kk, density, seed):
    rng = np.random.default_rng(seed)
    # Integer-valued vectors: dot products are exact in float32, and ties are common.
    query = rng.integers(-2, 3, (m, 3)).astype(np.float32)
    items = rng.integers(-2, 3, (n_cols, 3)).astype(np.float32)
    cand = rng.integers(-1, n_cols, (m, kk)).astype(np.int64)
    exclude = sp.random(m, n_cols, density=density, format="csr", random_state=seed)
    n = min(n, n_cols)
    idx = np.empty((m, n), np.int64)
    val = np.empty((m, n), np.float32)
    short = np.zeros(m, bool)
    mark = np.zeros(n_cols, np.int8)
    indptr = exclude.indptr.astype(np.int64)
    indices = exclude.indices.astype(np.int64)
    rerank_candidates(query, items, cand, indptr, indices, n, mark, idx, val, short)
    want_idx, want_val, want_short = _rerank_twin(query, items, cand, exclude, n)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(val, want_val)
    np.testing.assert_array_equal(short, want_short)
    assert not mark.any()


def _problem(n_users=300, n_items=500, f=8, density=0.05, seed=0):
    rng = np.random.default_rng(seed)
    query = rng.standard_normal((n_users, f)).astype(np.float32)
    # Norms spread over two orders of magnitude, as trained item factors' do.
    items = (rng.standard_normal((n_items, f)) * rng.lognormal(0, 1.2, (n_items, 1))).astype(
        np.float32
    )
    seen = sp.random(n_users, n_items, density=density, format="csr", random_state=seed)
    return query, items, seen.astype(np.int8)


def _exact(query, items, seen, n):
    return top_k_of_scores(np.asarray(query @ items.T, dtype=np.float32), n, seen)


def _ann(query, items, seen, n, **options):
    params = ann.ann_params(len(items), **options)
    return ann.ann_top_k(query, items, seen, n, ann.build_index(items, params), params)


@needs_faiss
@pytest.mark.parametrize(
    "options",
    [
        {"index": "flat"},
        {"index": "ivf", "nlist": 8, "nprobe": 8},  # every list probed: exhaustive
        {"index": "hnsw", "ef_search": 600},  # a candidate list as long as the catalogue
    ],
)
def test_exhaustive_index_equals_exact(options):
    query, items, seen = _problem()
    want_idx, want_val = _exact(query, items, seen, 10)
    idx, val = _ann(query, items, seen, 10, **options)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(val, want_val, rtol=1e-5, atol=1e-5)


@needs_faiss
def test_default_index_on_a_tiny_catalogue_is_exhaustive():
    # Fewer than 78 items: one inverted list, so the default search sees every item.
    query, items, seen = _problem(n_items=60, density=0.2)
    assert ann.ann_params(60).nlist == 1
    want_idx, _ = _exact(query, items, seen, 10)
    idx, _ = _ann(query, items, seen, 10)
    np.testing.assert_array_equal(idx, want_idx)


@needs_faiss
def test_default_recall_on_a_clustered_catalogue():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((30, 16))
    items = (centres[rng.integers(0, 30, 8000)] + 0.3 * rng.standard_normal((8000, 16))).astype(
        np.float32
    )
    query = (centres[rng.integers(0, 30, 500)] + rng.standard_normal((500, 16))).astype(np.float32)
    seen = sp.random(500, 8000, density=0.003, format="csr", random_state=1)
    want_idx, _ = _exact(query, items, seen, 10)
    idx, _ = _ann(query, items, seen, 10)
    assert ann.ann_params(8000).nprobe < ann.ann_params(8000).nlist  # really approximate
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, want_idx, strict=True)])
    assert recall >= 0.95


@needs_faiss
def test_seen_items_never_appear_and_rows_are_full():
    query, items, seen = _problem(n_users=400, n_items=2000, density=0.08, seed=4)
    # A coarse search (2 of 64 lists): many candidates are wrong or missing, none may leak.
    idx, val = _ann(query, items, seen, 10, nlist=64, nprobe=2)
    dense = seen.toarray().astype(bool)
    rows = np.repeat(np.arange(len(idx)), idx.shape[1])
    assert not dense[rows, idx.ravel()].any()
    assert (idx >= 0).all()  # every user has far more than 10 unseen items
    for r in range(len(idx)):
        assert len(set(idx[r])) == 10
        assert np.all(np.diff(val[r]) <= 0)
        np.testing.assert_allclose(val[r], items[idx[r]] @ query[r], rtol=1e-5, atol=1e-5)


@needs_faiss
@pytest.mark.parametrize("unseen", [0, 3, 10, 25])
def test_user_who_has_seen_almost_everything_gets_only_unseen_items(unseen):
    query, items, seen = _problem(n_users=5, n_items=3000, density=0.01, seed=2)
    rng = np.random.default_rng(unseen)
    rest = np.sort(rng.choice(3000, unseen, replace=False))
    heavy = np.setdiff1d(np.arange(3000), rest)
    seen = seen.tolil()
    seen[2, :] = 0
    seen[2, heavy] = 1
    seen = seen.tocsr()
    want_idx, want_val = _exact(query, items, seen, 10)
    idx, val = _ann(query, items, seen, 10, nlist=64, nprobe=1)
    got = idx[2][idx[2] >= 0]
    assert set(got) <= set(rest)
    assert len(got) == min(10, unseen)
    np.testing.assert_array_equal(idx[2], want_idx[2])
    np.testing.assert_array_equal(val[2], want_val[2])


@needs_faiss
def test_zero_query_vectors_get_the_exact_ties():
    query, items, seen = _problem(n_users=20, n_items=400)
    query[[3, 7]] = 0
    want_idx, _ = _exact(query, items, seen, 10)
    idx, _ = _ann(query, items, seen, 10, nlist=16, nprobe=2)
    np.testing.assert_array_equal(idx[[3, 7]], want_idx[[3, 7]])


@needs_faiss
def test_zero_query_rows_are_reranked_over_their_lowest_columns(monkeypatch):
    # Zero rows whose seen items fill their lowest columns: the exact ties skip those,
    # and the answer comes from the row's lowest k + s columns, no exact scoring.
    query, items, seen = _problem(n_users=30, n_items=500, density=0.01, seed=7)
    zero = [0, 4, 11, 12, 29]
    query[zero] = 0
    seen = seen.tolil()
    seen[4, :7] = 1
    seen[11, 3:40] = 1
    seen[12, [0, 2, 9, 10, 499]] = 1
    seen = seen.tocsr()
    scored: list[int] = []
    exact_rows = ann._exact_rows

    def counting(query, candidates, exclude, rows, *args):
        scored.extend(rows.tolist())
        return exact_rows(query, candidates, exclude, rows, *args)

    monkeypatch.setattr(ann, "_exact_rows", counting)
    want_idx, want_val = _exact(query, items, seen, 10)
    idx, val = _ann(query, items, seen, 10, nlist=16, nprobe=2)
    np.testing.assert_array_equal(idx[zero], want_idx[zero])
    np.testing.assert_array_equal(val[zero], want_val[zero])
    assert not set(scored) & set(zero)


def test_missing_faiss_names_the_extra(client, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    assert not ann.faiss_available()
    with pytest.raises(ImportError, match=r"pip install 'mfdask\[ann\]'"):
        ann.import_faiss()
    model = FixedModel(factors=4, random_state=0).fit(planted_ratings(40, 30, seed=1))
    with pytest.raises(ImportError, match=r"mfdask\[ann\]"):
        recommend_all(model, 5, tmp_path / "r", method="ann")
    assert not (tmp_path / "r").exists()
    # "auto" takes the exact path without faiss, whatever the catalogue's size.
    monkeypatch.setattr(ann, "AUTO_MIN_ITEMS", 1)
    out = recommend_all(model, 5, tmp_path / "auto", method="auto")
    assert read_manifest(out.path)["method"] == "exact"


def test_options_are_checked():
    with pytest.raises(ValueError, match="unknown ANN option"):
        ann.ann_params(100, nprob=3)
    with pytest.raises(ValueError, match="ANN index must be one of"):
        ann.ann_params(100, index="lsh")
    with pytest.raises(ValueError, match="nprobe must be a positive integer"):
        ann.ann_params(100, nprobe=0)
    with pytest.raises(ValueError, match="method must be one of"):
        ann.resolve_method("approx", 100, {})
    with pytest.raises(ValueError, match="with method='exact'"):
        ann.resolve_method("exact", 100, {"nprobe": 4})
    params = ann.ann_params(100_000)
    assert params.nlist == 1265 and params.nprobe == 65
    assert ann.ann_params(3706).nlist == 95 and ann.ann_params(3706).nprobe == 25
    assert ann.ann_params(100_000, nprobe=5000).nprobe == 1265  # clipped to the lists


# --------------------------------------------------------------------------- on the workers


@pytest.fixture(scope="module")
def ratings() -> pd.DataFrame:
    return planted_ratings(n_users=150, n_items=90, density=0.2, seed=5)


@pytest.fixture(scope="module")
def model(client, ratings) -> FixedModel:
    return FixedModel(factors=6, biased=True, random_state=3).fit(ratings)


def _read(path) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    frame = frame.drop(columns=[c for c in frame.columns if c.endswith("_block")])
    return frame.sort_values(list(frame.columns[:2])).reset_index(drop=True)


@needs_faiss
@pytest.mark.parametrize("n_blocks", [1, 3])
def test_recommend_all_ann_equals_exact_when_exhaustive(client, model, tmp_path, n_blocks):
    exact = recommend_all(model, 7, tmp_path / "exact", n_blocks=n_blocks)
    approx = recommend_all(
        model, 7, tmp_path / "ann", n_blocks=n_blocks, method="ann", nlist=4, nprobe=4
    )
    want, got = _read(exact.path), _read(approx.path)
    pd.testing.assert_frame_equal(got.drop(columns="score"), want.drop(columns="score"))
    np.testing.assert_allclose(got["score"], want["score"], rtol=1e-5, atol=1e-5)
    manifest = read_manifest(approx.path)
    assert manifest["method"] == "ann"
    assert manifest["ann"]["index"] == "ivf" and manifest["ann"]["nprobe"] == 4
    assert read_manifest(exact.path)["method"] == "exact"
    assert read_manifest(exact.path)["ann"] is None


@needs_faiss
def test_recommend_all_ann_never_returns_seen_items(client, model, tmp_path):
    out = recommend_all(model, 10, tmp_path / "ann", method="ann", nlist=4, nprobe=1)
    got = _read(out.path)
    seen = model.seen_items_.tocsr()
    u = model.user_index(got["user_id"])
    i = model.item_index(got["item_id"])
    assert not np.asarray(seen[u, i]).ravel().any()
    assert (got.groupby("user_id").size() == 10).all()


@needs_faiss
def test_similar_items_all_ann_equals_exact_when_exhaustive(client, model, tmp_path):
    exact = similar_items_all(model, 5, tmp_path / "exact", n_blocks=2)
    approx = similar_items_all(model, 5, tmp_path / "ann", n_blocks=2, method="ann", index="flat")
    want, got = _read(exact.path), _read(approx.path)
    pd.testing.assert_frame_equal(got.drop(columns="score"), want.drop(columns="score"))
    np.testing.assert_allclose(got["score"], want["score"], rtol=1e-5, atol=1e-5)
    assert (got["item_id"] != got["similar_item_id"]).all()
    assert read_manifest(approx.path)["ann"] == {"index": "flat", "max_fetch": 1024, "threads": 1}


@needs_faiss
def test_model_method_passes_ann_options(client, model, tmp_path):
    out = model.recommend_all(5, tmp_path / "r", method="ann", index="hnsw", ef_search=64)
    assert out.manifest["method"] == "ann" and out.manifest["ann"]["ef_search"] == 64


@pytest.fixture
def saved(model, monkeypatch, tmp_path):
    original = registry.model_classes
    monkeypatch.setattr(registry, "model_classes", lambda: {**original(), "fixedmodel": FixedModel})
    return model.save(tmp_path / "model")


@needs_faiss
def test_recommend_and_similar_jobs_with_method_ann(client, saved, model, tmp_path, capsys):
    code = main(["recommend", str(saved), str(tmp_path / "r"), "-n", "6", "--method", "ann",
                 "--ann", "nlist=4", "--ann", "nprobe=4"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "ann) in" in out
    manifest = read_manifest(tmp_path / "r")
    assert manifest["method"] == "ann" and manifest["ann"]["nlist"] == 4
    exact = recommend_all(model, 6, tmp_path / "exact")
    pd.testing.assert_frame_equal(
        _read(tmp_path / "r").drop(columns="score"), _read(exact.path).drop(columns="score")
    )
    code = main(["similar", str(saved), str(tmp_path / "s"), "--method", "ann"])
    assert code == 0, capsys.readouterr().err
    assert read_manifest(tmp_path / "s")["method"] == "ann"


def test_job_errors_name_the_problem(client, saved, tmp_path, capsys, monkeypatch):
    code = main(["recommend", str(saved), str(tmp_path / "r"), "--ann", "nprobe=4"])
    assert code == 2
    assert "--ann settings need --method ann" in capsys.readouterr().err
    code = main(
        ["recommend", str(saved), str(tmp_path / "r"), "--method", "ann", "--ann", "nprobe"]
    )
    assert code == 2
    assert "expected NAME=VALUE" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "faiss", None)
    code = main(["similar", str(saved), str(tmp_path / "s"), "--method", "ann"])
    assert code == 2
    assert "pip install 'mfdask[ann]'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@needs_faiss
def test_index_deserialized_once_per_array():
    _, items, _ = _problem(n_users=1, n_items=200)
    params = ann.ann_params(200)
    blob = ann.build_index(items, params)
    first = ann.load_index(blob)
    assert ann.load_index(blob) is first
    other = blob.copy()  # equal bytes, another array: another entry
    assert ann.load_index(other) is not first
    del blob, first
    assert len([k for k, (ref, _) in ann._CACHE.items() if ref() is not None]) == 1
