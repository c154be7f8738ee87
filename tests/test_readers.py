"""Readers: the parsing kernel against a slow Python twin, format detection, item files."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mfdask.data.readers import (
    ML_100K_GENRES,
    canonical_format,
    detect_format,
    parse_text_block,
    read_items,
    resolve_source,
)
from mfdask.data.validate import IngestError
from mfdask.kernels import parse as kparse


def twin(line: str, sep: str, n_fields: int):
    """Obviously-correct reference: (status, user, item, rating, timestamp) of one line."""
    line = line.rstrip("\r")
    if not line:
        return kparse.STATUS_BLANK, None
    fields = [f.strip(" ").strip('"') for f in line.split(sep)]
    if len(fields) != n_fields:
        return kparse.STATUS_FIELD_COUNT, len(fields)
    u, i, r, t = fields
    # The first problem in field order is the one reported (``0,0,x,`` is "not a
    # number" in the rating, before the empty timestamp).
    if "" in (u, i, r):
        return kparse.STATUS_EMPTY_FIELD, None
    try:
        rating = float(r)
    except ValueError:
        return kparse.STATUS_NOT_NUMBER, None
    if not np.isfinite(rating) or r.lower().lstrip("+-") in ("nan", "inf", "infinity"):
        return kparse.STATUS_NOT_NUMBER, None
    if t == "":
        return kparse.STATUS_EMPTY_FIELD, None
    try:
        ts = int(t)
    except ValueError:
        return kparse.STATUS_NOT_NUMBER, None

    def as_int(x: str) -> int | None:
        return int(x) if x.lstrip("+-").isdigit() and len(x.lstrip("+-")) <= 18 else None

    return kparse.STATUS_OK, (as_int(u), as_int(i), rating, ts)


field = st.one_of(
    st.integers(0, 10**12).map(str),
    st.floats(0, 10, allow_nan=False).map(lambda x: f"{x:.3g}"),
    st.sampled_from(["", "x", "nan", "4.5", "-3", "1e2", " 7 ", '"8"', "3.", ".5"]),
)
line = st.lists(field, min_size=1, max_size=6)


@settings(max_examples=150, deadline=None)
@given(st.lists(line, min_size=1, max_size=30), st.sampled_from([",", "::", "\t"]))
def test_kernel_matches_python_twin(rows, sep):
    lines = [sep.join(r) for r in rows]
    data = ("\n".join(lines) + "\n").encode()
    buf = np.frombuffer(data, np.uint8)
    n = kparse.count_lines(buf)
    assert n == len(lines)
    out = {k: np.empty(n, np.int64) for k in ("user", "item", "timestamp", "line_start")}
    rating = np.empty(n)
    id_is_int = np.empty((n, 2), np.bool_)
    status = np.empty(n, np.int8)
    detail = np.empty(n, np.int32)
    kparse.parse_block(
        buf,
        np.frombuffer(sep.encode(), np.uint8),
        np.array([0, 1, 2, 3], np.int8),
        out["user"],
        out["item"],
        rating,
        out["timestamp"],
        id_is_int,
        np.empty((0, 4), np.int64),
        status,
        detail,
        out["line_start"],
    )
    for k, text in enumerate(lines):
        want, extra = twin(text, sep, 4)
        if want == kparse.STATUS_OK:
            u, i, r, t = extra
            assert status[k] == kparse.STATUS_OK, text
            assert id_is_int[k].tolist() == [u is not None, i is not None], text
            assert out["timestamp"][k] == t
            assert rating[k] == pytest.approx(r, rel=1e-12)
            if u is not None and i is not None:
                assert (out["user"][k], out["item"][k]) == (u, i)
        elif want == kparse.STATUS_FIELD_COUNT:
            assert (status[k], detail[k]) == (want, extra), text
        else:
            assert status[k] == want, (text, status[k])


def test_multibyte_separator_crlf_and_quotes():
    src_line = b'1::2::3.5::10\r\n\r\n"4"::"5"::2::11\n6::7::1::'
    from mfdask.data.readers import RatingSource

    source = RatingSource(
        format="ml-dat",
        files=(),
        sep="::",
        field_names=("u", "i", "r", "t"),
        roles=(0, 1, 2, 3),
        rating_range=(0.5, 5.0),
    )
    block = parse_text_block(src_line, source, first_in_file=True)
    assert block.n_lines == 4 and block.n_blank == 1
    assert block.good[
        ["user_id", "item_id", "rating", "timestamp", "line"]
    ].to_numpy().tolist() == [
        [1, 2, 3.5, 10, 0],
        [4, 5, 2.0, 11, 2],
    ]
    assert block.bad[["line", "reason", "text"]].to_numpy().tolist() == [
        [3, "t is empty", "6::7::1::"]
    ]


def test_detect_format(tmp_path):
    for name, fmt in (("u.data", "ml-100k"), ("ratings.dat", "ml-dat")):
        d = tmp_path / fmt
        d.mkdir()
        (d / name).write_text("1\n")
        assert detect_format(d) == fmt
        assert detect_format(d / name) == fmt
    csv = tmp_path / "ratings.csv"
    csv.write_text("userId,movieId,rating,timestamp\n")
    assert detect_format(csv) == "ml-csv"
    other = tmp_path / "x.csv"
    other.write_text("user_id,item_id,rating\n")
    assert detect_format(other) == "csv"
    assert detect_format(tmp_path / "x.parquet") == "parquet"
    with pytest.raises(IngestError, match="cannot tell the format"):
        detect_format(tmp_path / "x.json")
    assert canonical_format("ml-25m") == "ml-csv"
    with pytest.raises(ValueError, match="unknown format 'ml-2m'"):
        canonical_format("ml-2m")


def test_columns_are_fixed_for_movielens(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::2::3::4\n")
    with pytest.raises(ValueError, match="format ml-dat has fixed columns"):
        resolve_source(tmp_path, user_col="x")


@pytest.mark.data
def test_ml100k_items_genres(ml100k_dir):
    items = read_items(resolve_source(ml100k_dir))
    assert len(items) == 1682
    assert len(ML_100K_GENRES) == 19
    row = items.set_index("item_id").loc[1]
    assert (row.title, row.genres) == ("Toy Story (1995)", "Animation|Children's|Comedy")
    assert items["genres"].str.len().gt(0).all()


def test_first_problem_in_field_order_is_reported():
    """A bad rating is named before an empty timestamp after it (seen by the twin test)."""
    data = b"0,0,x,\n0,0,,x\n"
    buf = np.frombuffer(data, np.uint8)
    status = np.empty(2, np.int8)
    kparse.parse_block(
        buf,
        np.frombuffer(b",", np.uint8),
        np.array([0, 1, 2, 3], np.int8),
        *(np.empty(2, np.int64) for _ in range(2)),
        np.empty(2),
        np.empty(2, np.int64),
        np.empty((2, 2), np.bool_),
        np.empty((0, 4), np.int64),
        status,
        np.empty(2, np.int32),
        np.empty(2, np.int64),
    )
    assert status.tolist() == [kparse.STATUS_NOT_NUMBER, kparse.STATUS_EMPTY_FIELD]
    assert twin("0,0,x,", ",", 4)[0] == kparse.STATUS_NOT_NUMBER
    assert twin("0,0,,x", ",", 4)[0] == kparse.STATUS_EMPTY_FIELD
