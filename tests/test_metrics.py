"""Metric functions: hand-computed cases, a slow pure-Python twin, property tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from mfdask.metrics import (
    RankingSums,
    RatingSums,
    auc,
    average_precision_at_k,
    catalogue_coverage,
    hit_rate_at_k,
    hits_at_k,
    implicit_auc_at_k,
    implicit_precision_at_k,
    mae,
    ndcg_at_k,
    precision_at_k,
    ranking_metrics,
    ranking_sums,
    rating_sums,
    recall_at_k,
    rmse,
)

# --------------------------------------------------------------------------- the twin


def twin_user(lst: list[int], rel: set[int], k: int, n_items: int) -> dict[str, float]:
    """Obviously-correct per-user metrics, one user at a time, in plain Python."""
    lst = (list(lst[:k]) + [-1] * k)[:k]
    hit = [1 if (i >= 0 and i in rel) else 0 for i in lst]
    h = sum(hit)
    out = {
        "precision": h / k,
        "recall": h / len(rel),
        "hit_rate": 1.0 if h else 0.0,
    }
    dcg = sum(hit[j] / math.log2(j + 2) for j in range(k))
    idcg = sum(1 / math.log2(j + 2) for j in range(min(k, len(rel))))
    out["ndcg"] = dcg / idcg
    seen_hits, ap = 0, 0.0
    for j in range(k):
        if hit[j]:
            seen_hits += 1
            ap += seen_hits / (j + 1)
    out["ap"] = ap / min(k, len(rel))
    # implicit's loop, verbatim in spirit: misses add the hits above them.
    n_pos, n_neg = len(rel), n_items - len(rel)
    hits_so_far, misses, a = 0, 0, 0.0
    for j in range(k):
        if hit[j]:
            hits_so_far += 1
        else:
            misses += 1
            a += hits_so_far
    a += (hits_so_far + n_pos) / 2.0 * (n_neg - misses)
    out["implicit_auc"] = a / (n_pos * n_neg) if n_pos and n_neg else float("nan")
    out["hits"] = h
    out["ideal"] = min(k, len(rel))
    return out


def twin_auc(scores: np.ndarray, pos: set[int], excl: set[int]) -> float:
    s = [float(v) for v in np.asarray(scores, dtype=np.float32)]
    negs = [j for j in range(len(s)) if j not in pos and j not in excl]
    if not pos or not negs:
        return float("nan")
    total = 0.0
    for p in pos:
        for q in negs:
            total += 1.0 if s[p] > s[q] else (0.5 if s[p] == s[q] else 0.0)
    return total / (len(pos) * len(negs))


def twin_means(recs, rel_sets, k, n_items, scores=None, excl_sets=None) -> dict[str, float]:
    per = [twin_user(list(r), s, k, n_items) for r, s in zip(recs, rel_sets, strict=True) if s]
    out = {}
    for name, key in [
        ("precision", "precision"),
        ("recall", "recall"),
        ("ndcg", "ndcg"),
        ("map", "ap"),
        ("hit_rate", "hit_rate"),
    ]:
        out[name] = float(np.mean([p[key] for p in per])) if per else float("nan")
    ia = [p["implicit_auc"] for p in per if not math.isnan(p["implicit_auc"])]
    out["implicit_auc"] = float(np.mean(ia)) if ia else float("nan")
    ideal = sum(p["ideal"] for p in per)
    out["implicit_precision"] = sum(p["hits"] for p in per) / ideal if ideal else float("nan")
    items = {i for r, s in zip(recs, rel_sets, strict=True) if s for i in list(r)[:k] if i >= 0}
    out["coverage"] = len(items) / n_items
    out["users"] = len(per)
    if scores is not None:
        a = [
            twin_auc(scores[u], rel_sets[u], (excl_sets or [set()] * len(rel_sets))[u])
            for u in range(len(rel_sets))
            if rel_sets[u]
        ]
        a = [v for v in a if not math.isnan(v)]
        out["auc"] = float(np.mean(a)) if a else float("nan")
        out["auc_users"] = len(a)
    return out


def csr(sets: list[set[int]], n_items: int) -> sp.csr_matrix:
    rows = [u for u, s in enumerate(sets) for _ in s]
    cols = [i for s in sets for i in sorted(s)]
    return sp.csr_matrix(
        (np.ones(len(rows)), (np.array(rows, dtype=int), np.array(cols, dtype=int))),
        shape=(len(sets), n_items),
    )


def assert_close(a: float, b: float) -> None:
    if math.isnan(b):
        assert math.isnan(a)
    else:
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12)


# --------------------------------------------------------------------------- hand cases


def test_hand_computed_one_user():
    recs = np.array([[0, 1, 2]])
    rel = csr([{1, 5}], 6)
    assert hits_at_k(recs, rel).tolist() == [[False, True, False]]
    assert precision_at_k(recs, rel)[0] == pytest.approx(1 / 3)
    assert recall_at_k(recs, rel)[0] == pytest.approx(1 / 2)
    dcg = 1 / math.log2(3)
    assert ndcg_at_k(recs, rel)[0] == pytest.approx(dcg / (1 + dcg))
    assert average_precision_at_k(recs, rel)[0] == pytest.approx((1 / 2) / 2)
    assert hit_rate_at_k(recs, rel)[0] == 1.0
    # implicit: miss at rank 0 (0 hits above), hit, miss (1 hit above) -> 1;
    # 4 negatives, 2 missed, 2 outside: (1 + 2) / 2 * (4 - 2) = 3  -> 4 / (2 * 4)
    assert implicit_auc_at_k(recs, rel, 6)[0] == pytest.approx(4 / 8)


def test_no_hits():
    recs = np.array([[0, 1], [2, 3]])
    rel = csr([{4}, {5}], 6)
    for f in (precision_at_k, recall_at_k, ndcg_at_k, average_precision_at_k, hit_rate_at_k):
        assert f(recs, rel).tolist() == [0.0, 0.0]


def test_perfect_lists():
    recs = np.array([[3, 1, 4], [2, -1, -1], [5, 0, 1]])
    rel = csr([{1, 3, 4}, {2}, {0, 1, 2, 3, 5}], 6)
    assert precision_at_k(recs, rel).tolist() == pytest.approx([1.0, 1 / 3, 1.0])
    assert recall_at_k(recs, rel).tolist() == pytest.approx([1.0, 1.0, 3 / 5])
    assert ndcg_at_k(recs, rel).tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert average_precision_at_k(recs, rel).tolist() == pytest.approx([1.0, 1.0, 1.0])
    scores = np.array([[0, 5, 0, 5, 5, 0], [0, 0, 9, 0, 0, 0], [5, 5, 5, 5, 0, 5]], float)
    assert auc(scores, rel).tolist() == [1.0, 1.0, 1.0]


def test_short_list_is_padded_with_misses():
    recs = np.array([[3, -1, -1]])
    rel = csr([{3}], 10)
    assert precision_at_k(recs, rel)[0] == pytest.approx(1 / 3)  # still over k
    assert recall_at_k(recs, rel)[0] == 1.0
    assert ndcg_at_k(recs, rel)[0] == 1.0
    assert average_precision_at_k(recs, rel)[0] == 1.0
    # k larger than the list: the missing ranks are misses
    assert precision_at_k(recs, rel, k=5)[0] == pytest.approx(1 / 5)
    # k smaller than the list truncates it
    assert precision_at_k(np.array([[0, 3]]), rel, k=1)[0] == 0.0


def test_users_without_relevant_items_are_nan_and_excluded():
    recs = np.array([[0, 1], [0, 1]])
    rel = csr([set(), {1}], 4)
    assert np.isnan(precision_at_k(recs, rel)[0])
    means = ranking_metrics(recs, rel)
    assert means["users"] == 1
    assert means["precision"] == 0.5
    assert means["coverage"] == pytest.approx(2 / 4)


def test_empty_block():
    recs = np.empty((0, 5), dtype=np.int64)
    rel = sp.csr_matrix((0, 7))
    assert hits_at_k(recs, rel).shape == (0, 5)
    means = ranking_metrics(recs, rel, scores=np.empty((0, 7)))
    assert means["users"] == 0
    assert math.isnan(means["precision"]) and math.isnan(means["auc"])
    assert means["coverage"] == 0.0
    assert math.isnan(implicit_precision_at_k(recs, rel))


def test_implicit_precision_is_a_ratio_of_totals():
    # user 0: 1 relevant item, hit; user 1: 5 relevant, 1 hit; k = 2
    recs = np.array([[0, 1], [2, 9]])
    rel = csr([{0}, {2, 3, 4, 5, 6}], 10)
    assert implicit_precision_at_k(recs, rel) == pytest.approx(2 / (1 + 2))
    assert np.mean(precision_at_k(recs, rel)) == pytest.approx(0.5)


def test_auc_hand_computed_with_ties_and_exclusions():
    scores = np.array([[0.9, 0.1, 0.5, 0.5]])
    rel = csr([{2}], 4)
    excl = csr([{0}], 4)
    # positive 2 vs negatives {1, 3}: above 1 (1), tied with 3 (1/2)
    assert auc(scores, rel, excl)[0] == pytest.approx(0.75)
    # without the exclusion item 0 is a negative ranked above the positive
    assert auc(scores, rel)[0] == pytest.approx(1.5 / 3)
    # all tied: one half; no negative left: NaN
    assert auc(np.zeros((1, 4)), rel)[0] == 0.5
    assert np.isnan(auc(scores, csr([{1, 2}], 4), csr([{0, 3}], 4))[0])


def test_auc_negative_zero_ties_positive_zero():
    scores = np.array([[-0.0, 0.0, 1.0]])
    assert auc(scores, csr([{0}], 3))[0] == pytest.approx(0.5 * 0.5)


@pytest.mark.parametrize("n_positives", [1, 5, 32, 33, 120])
def test_auc_equals_the_pair_count_on_both_sides_of_the_many_positives_switch(n_positives):
    """Few positives: one pass per positive; many: a sort of the row. Same statistic."""
    rng = np.random.default_rng(n_positives)
    n_items, m = 400, 6
    # coarse scores: plenty of ties, also between positives, negatives and exclusions
    scores = rng.integers(-20, 20, (m, n_items)).astype(np.float32) / 4
    scores[0, :50] = -0.0
    rel_sets, excl_sets = [], []
    for _ in range(m):
        chosen = rng.choice(n_items, size=n_positives + 60, replace=False).tolist()
        pos = set(chosen[:n_positives])
        excl = set(chosen[n_positives - 1 :])  # one positive is also excluded
        rel_sets.append(pos)
        excl_sets.append(excl)
    got = auc(scores, csr(rel_sets, n_items), csr(excl_sets, n_items))
    want = [twin_auc(scores[u], rel_sets[u], excl_sets[u] - rel_sets[u]) for u in range(m)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    mixed = auc(scores, csr(rel_sets[:3] + [set(range(40))] * 3, n_items))
    want = [
        twin_auc(scores[u], s, set()) for u, s in enumerate(rel_sets[:3] + [set(range(40))] * 3)
    ]
    np.testing.assert_allclose(mixed, want, rtol=1e-12)


def test_auc_relevant_and_excluded_counts_as_positive():
    scores = np.array([[3.0, 1.0, 2.0]])
    assert auc(scores, csr([{0}], 3), csr([{0, 2}], 3))[0] == 1.0


def test_coverage():
    assert catalogue_coverage(np.array([[0, 1], [1, -1]]), 4) == 0.5


def test_bad_inputs_are_named():
    rel = csr([{1}], 3)
    with pytest.raises(ValueError, match=r"outside -1\.\.2"):
        precision_at_k(np.array([[5]]), rel)
    with pytest.raises(ValueError, match="has 1 rows but there are 2 users"):
        precision_at_k(np.array([[0], [1]]), rel)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        precision_at_k(np.array([[0]]), rel, k=0)
    with pytest.raises(ValueError, match="NaN or infinity"):
        auc(np.array([[np.nan, 1.0, 2.0]]), rel)
    with pytest.raises(TypeError, match="scipy sparse"):
        precision_at_k(np.array([[0]]), np.array([[0, 1, 0]]))


def test_rating_errors():
    assert rmse([1.0, 2.0, 3.0], [1.0, 2.0, 5.0]) == pytest.approx(math.sqrt(4 / 3))
    assert mae([1.0, 2.0, 3.0], [1.0, 2.0, 5.0]) == pytest.approx(2 / 3)
    assert rmse([3.0], [3.0]) == 0.0
    with pytest.raises(ValueError, match="no ratings"):
        rmse([], [])
    with pytest.raises(ValueError, match="predicted has 2 values but actual has 1"):
        mae([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="predicted rating at position 1 is nan"):
        rmse([1.0, np.nan], [1.0, 1.0])
    total = rating_sums([1.0], [2.0]) + rating_sums([4.0, 4.0], [4.0, 1.0])
    assert total.means() == pytest.approx({"rmse": math.sqrt(10 / 3), "mae": 4 / 3, "count": 3})
    assert math.isnan(RatingSums().means()["rmse"])


def test_sums_refuse_mismatched_blocks():
    with pytest.raises(ValueError, match="cannot add ranking sums"):
        RankingSums(k=5, n_items=3) + RankingSums(k=10, n_items=3)


# --------------------------------------------------------------------------- properties


@st.composite
def ranking_case(draw):
    n_items = draw(st.integers(1, 12))
    m = draw(st.integers(0, 7))
    width = draw(st.integers(1, n_items))
    k = draw(st.integers(1, width + 2))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rel_sets, recs, excl_sets = [], [], []
    for _ in range(m):
        rel_sets.append({int(i) for i in np.flatnonzero(rng.random(n_items) < 0.35)})
        excl_sets.append({int(i) for i in np.flatnonzero(rng.random(n_items) < 0.2)})
        length = int(rng.integers(0, width + 1))
        lst = list(rng.permutation(n_items)[:length]) + [-1] * (width - length)
        recs.append(lst)
    recs = np.array(recs, dtype=np.int64).reshape(m, width)
    # Coarse scores so that ties happen.
    scores = rng.integers(-3, 4, size=(m, n_items)).astype(np.float32) / 2
    return recs, rel_sets, excl_sets, k, n_items, scores


@settings(max_examples=150, deadline=None)
@given(ranking_case())
def test_vectorised_metrics_equal_the_twin(case):
    recs, rel_sets, excl_sets, k, n_items, scores = case
    rel, excl = csr(rel_sets, n_items), csr(excl_sets, n_items)
    got = ranking_metrics(recs, rel, k=k, scores=scores, exclude=excl)
    want = twin_means(recs, rel_sets, k, n_items, scores, excl_sets)
    for name, value in want.items():
        assert_close(got[name], value)
    for name in ("precision", "recall", "ndcg", "map", "hit_rate", "auc", "coverage"):
        v = got[name]
        assert math.isnan(v) or 0.0 <= v <= 1.0 + 1e-12, name


@settings(max_examples=60, deadline=None)
@given(ranking_case(), st.integers(0, 7))
def test_sums_of_blocks_equal_sums_of_the_whole(case, cut):
    recs, rel_sets, excl_sets, k, n_items, scores = case
    rel, excl = csr(rel_sets, n_items), csr(excl_sets, n_items)
    cut = min(cut, len(rel_sets))
    a = auc(scores, rel, excl)
    whole = ranking_sums(recs, rel, k=k, auc_values=a)
    parts = ranking_sums(recs[:cut], rel[:cut], k=k, auc_values=a[:cut]) + ranking_sums(
        recs[cut:], rel[cut:], k=k, auc_values=a[cut:]
    )
    for name, value in whole.means().items():
        assert_close(parts.means()[name], value)


@settings(max_examples=60, deadline=None)
@given(ranking_case())
def test_auc_reverses_with_the_scores_and_ignores_monotone_maps(case):
    _, rel_sets, excl_sets, _, n_items, scores = case
    rel, excl = csr(rel_sets, n_items), csr(excl_sets, n_items)
    a = auc(scores, rel, excl)
    b = auc(-scores, rel, excl)
    c = auc(np.exp(scores) * 3 + 1, rel, excl)
    ok = ~np.isnan(a)
    np.testing.assert_allclose(a[ok] + b[ok], 1.0)
    np.testing.assert_allclose(c[ok], a[ok])


def test_perfect_top_k_from_scores_has_perfect_metrics():
    from mfdask.recommend import top_k_of_scores

    rng = np.random.default_rng(4)
    rel_sets = [
        set(rng.choice(50, size=rng.integers(1, 15), replace=False).tolist()) for _ in range(40)
    ]
    rel = csr(rel_sets, 50)
    scores = rng.random((40, 50)).astype(np.float32) + rel.toarray().astype(np.float32) * 2
    recs, _ = top_k_of_scores(scores.copy(), 10)
    got = ranking_metrics(recs, rel, scores=scores)
    assert got["ndcg"] == pytest.approx(1.0)
    assert got["map"] == pytest.approx(1.0)
    assert got["auc"] == pytest.approx(1.0)
    assert got["hit_rate"] == 1.0
