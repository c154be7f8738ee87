"""Every kind of bad input: the exact error (file, line, problem) or the quarantine count."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from mfdask.data import ingest as ingest_module
from mfdask.data import schema
from mfdask.data.dataset import is_dataset
from mfdask.data.ingest import ingest
from mfdask.data.validate import (
    Accounting,
    AccountingError,
    BadRowsError,
    DelimiterError,
    DuplicateRatingError,
    IngestError,
    check_accounting,
)

HEADER = "user_id,item_id,rating,timestamp\n"


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def good_lines(n: int, start_user: int = 1) -> str:
    return "".join(f"{start_user + k % 7},{100 + k},{1 + k % 5},{1000 + k}\n" for k in range(n))


def assert_nothing_written(dest: Path) -> None:
    assert not dest.exists()
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}.")]


def error_at(exc: pytest.ExceptionInfo, path: Path, line: int) -> None:
    assert exc.value.path == str(path)
    assert exc.value.line == line
    assert str(exc.value).startswith(f"{path}, line {line}: ")


@pytest.mark.parametrize(
    ("bad_line", "problem"),
    [
        ("3,104,abc,1004", "rating is not a number: '3,104,abc,1004'"),
        ("3,104,NaN,1004", "rating is not a number: '3,104,NaN,1004'"),
        ("3,104,,1004", "rating is empty: '3,104,,1004'"),
        ("3,104,4", "expected 4 fields separated by ',', found 3: '3,104,4'"),
        ("3,104,4,1004,9", "expected 4 fields separated by ',', found 5: '3,104,4,1004,9'"),
        ("3,104,4,yesterday", "timestamp is not an integer: '3,104,4,yesterday'"),
        ('3,"104,4,1004', "user_id... "),
        ("garbage", "expected 4 fields separated by ',', found 1: 'garbage'"),
    ],
)
def test_bad_row_stops_with_file_line_and_problem(client, tmp_path, bad_line, problem):
    src = write(tmp_path / "r.csv", HEADER + good_lines(5) + bad_line + "\n" + good_lines(3, 50))
    dest = tmp_path / "out"
    with pytest.raises(BadRowsError) as exc:
        ingest(src, dest)
    error_at(exc, src, 7)  # header is line 1, five good lines, then the bad one
    if problem.endswith("... "):
        assert "double quote" in exc.value.problem or "fields" in exc.value.problem
    else:
        assert exc.value.problem.startswith(problem)
    assert "--on-bad-rows skip" in exc.value.problem
    assert_nothing_written(dest)


def test_out_of_range_rating_names_the_range(client, tmp_path):
    src = write(tmp_path / "r.csv", HEADER + good_lines(3) + "9,9,7.5,1\n")
    with pytest.raises(BadRowsError) as exc:
        ingest(src, tmp_path / "out", rating_range=(1, 5))
    error_at(exc, src, 5)
    assert exc.value.problem.startswith("rating 7.5 is outside the range [1, 5]")
    # without a declared range a generic file takes any finite rating
    ds = ingest(src, tmp_path / "out")
    assert ds.manifest["rating_max"] == 7.5


def test_movielens_default_range_and_int_ids(client, tmp_path):
    d = tmp_path / "ml-1m"
    d.mkdir()
    src = write(d / "ratings.dat", "1::10::5::100\n1::11::6::100\n2::x1::3::100\n")
    with pytest.raises(BadRowsError) as exc:
        ingest(d, tmp_path / "out")
    error_at(exc, src, 2)
    assert exc.value.problem.startswith("Rating 6 is outside the range [0.5, 5]")
    ds = ingest(d, tmp_path / "out", on_bad_rows="skip")
    q = pd.read_parquet(ds.path / schema.QUARANTINE_FILE)
    assert q["line"].tolist() == [2, 3]
    assert q["reason"].iloc[1] == "MovieID is not an integer"
    assert q["text"].iloc[1] == "2::x1::3::100"


def test_skip_quarantines_with_lines_across_many_blocks(client, tmp_path):
    # ~12 blocks of 4 KiB: line numbers must still be exact across Dask partitions.
    lines = [HEADER.rstrip("\n")]
    bad_at = {}
    for k in range(2, 3002):
        if k % 250 == 0:
            lines.append(f"{k},{k},oops,{k}")
            bad_at[k] = "rating is not a number"
        elif k % 333 == 0:
            lines.append(f"{k},{k}")
            bad_at[k] = "expected 4 fields separated by ',', found 2"
        elif k % 777 == 0:
            lines.append("")  # blank lines are not ratings, but they count as lines
        else:
            lines.append(f"{k % 37},{k % 13},{1 + k % 5},{k}")
    src = write(tmp_path / "big.csv", "\r\n".join(lines) + "\r\n")
    dest = tmp_path / "out"
    with pytest.raises(BadRowsError) as exc:
        ingest(src, dest, blocksize=4096, duplicates="last")
    error_at(exc, src, 250)
    assert f"({len(bad_at) - 1:,} more bad rows after it)" in exc.value.problem
    ds = ingest(src, dest, blocksize=4096, duplicates="last", on_bad_rows="skip")
    q = pd.read_parquet(dest / schema.QUARANTINE_FILE)
    assert q["line"].tolist() == sorted(bad_at)
    assert q["reason"].tolist() == [bad_at[k] for k in sorted(bad_at)]
    assert set(q["file"]) == {str(src)}
    m = ds.manifest
    n_blank = len([k for k in range(2, 3002) if k % 777 == 0 and k % 250 and k % 333])
    assert m["ingest"]["blank_lines"] == n_blank
    assert m["rows_quarantined"] == len(bad_at)
    assert m["rows_in"] == 3000 - n_blank
    assert m["rows_in"] == m["rows"] + m["rows_quarantined"] + m["duplicates_merged"]
    assert m["duplicates_merged"] > 0


def test_duplicates_error_names_both_lines(client, tmp_path):
    src = write(tmp_path / "r.csv", HEADER + "1,10,4,100\n2,10,3,100\n1,10,5,200\n")
    with pytest.raises(DuplicateRatingError) as exc:
        ingest(src, tmp_path / "out")
    error_at(exc, src, 4)
    assert exc.value.problem.startswith("duplicate rating: user 1 already rated item 10 at line 2")
    assert "--duplicates last" in exc.value.problem
    assert_nothing_written(tmp_path / "out")


def test_duplicates_error_names_the_first_repeat_of_the_file(client, tmp_path, monkeypatch):
    # Two repeated pairs in different blocks and user buckets (9 and 1 of 11):
    # the error names the repeat that comes first in the file, whichever task finds it.
    monkeypatch.setattr(ingest_module, "ROWS_PER_BUCKET", 40)
    rows = [f"{k},{k % 11},3,{k}" for k in range(1000, 1400)]  # lines 2..401
    rows[300] = "1008,7,4,5"  # line 302 repeats line 10 (user 1008, item 1008 % 11)
    rows[250] = "1018,6,2,5"  # line 252 repeats line 20 (user 1018, item 1018 % 11)
    src = write(tmp_path / "r.csv", HEADER + "\n".join(rows) + "\n")
    with pytest.raises(DuplicateRatingError) as exc:
        ingest(src, tmp_path / "out", blocksize=2048)
    error_at(exc, src, 252)
    assert exc.value.problem.startswith(
        "duplicate rating: user 1018 already rated item 6 at line 20;"
    )
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize(
    ("policy", "rating", "ts"), [("last", 2.0, 300), ("mean", (4 + 5 + 2) / 3, 300)]
)
def test_duplicates_last_and_mean(client, tmp_path, policy, rating, ts):
    text = HEADER + "1,10,4,100\n2,10,3,100\n1,10,5,200\n2,11,1,5\n1,10,2,300\n"
    src = write(tmp_path / "r.csv", text)
    ds = ingest(src, tmp_path / policy, duplicates=policy)
    r = ds.ratings().compute().sort_values(["user_idx", "item_idx"])
    row = r[(r.user_idx == 0) & (r.item_idx == 0)]
    assert row["rating"].tolist() == [pytest.approx(rating)]
    assert row["timestamp"].tolist() == [ts]
    assert ds.manifest["duplicates_merged"] == 2
    assert ds.manifest["rows"] == 3
    assert ds.manifest["ingest"]["duplicates"] == policy


def test_duplicates_across_partitions_keep_the_last_line(client, tmp_path):
    # The same pair on line 2 and near the end, in different blocks.
    body = "7,70,1,1\n" + good_lines(400) + "7,70,5,2\n"
    src = write(tmp_path / "r.csv", HEADER + body)
    ds = ingest(src, tmp_path / "out", blocksize=4096, duplicates="last")
    r = ds.ratings().compute()
    users, items = ds.users(), ds.items()
    u = int(users.loc[users.user_id == 7, "user_idx"].iloc[0])
    i = int(items.loc[items.item_id == 70, "item_idx"].iloc[0])
    pair = r[(r.user_idx == u) & (r.item_idx == i)]
    assert pair["rating"].tolist() == [5.0]
    assert ds.manifest["duplicates_merged"] == 1


def test_empty_file(client, tmp_path):
    src = write(tmp_path / "r.csv", "")
    with pytest.raises(IngestError, match=re.escape(f"{src}: the file is empty")):
        ingest(src, tmp_path / "out")


def test_header_only(client, tmp_path):
    src = write(tmp_path / "r.csv", HEADER)
    with pytest.raises(IngestError, match=re.escape(f"{src}: holds no ratings")):
        ingest(src, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_missing_file_and_directory(client, tmp_path):
    with pytest.raises(IngestError, match=re.escape(f"{tmp_path / 'nope.csv'}: does not exist")):
        ingest(tmp_path / "nope.csv", tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(IngestError, match=r"no ratings file found: expected u\.data"):
        ingest(empty, tmp_path / "out")


def test_wrong_delimiter_says_which_was_expected(client, tmp_path):
    d = tmp_path / "ml-1m"
    d.mkdir()
    src = write(d / "ratings.dat", "1,10,5,100\n1,11,4,100\n")
    with pytest.raises(DelimiterError) as exc:
        ingest(d, tmp_path / "out")
    error_at(exc, src, 1)
    assert exc.value.problem == (
        "expected 4 fields separated by '::' but the line does not split on it: "
        "'1,10,5,100'; it looks ','-separated: pass --sep ','"
    )
    tsv = write(tmp_path / "r.csv", "user_id\titem_id\trating\n1\t2\t3\n")
    with pytest.raises(DelimiterError) as exc:
        ingest(tsv, tmp_path / "out")
    error_at(exc, tsv, 1)
    assert "it looks a tab ('\\t')-separated: pass --sep '\\t'" in exc.value.problem
    ds = ingest(tsv, tmp_path / "out", sep="\t")
    assert ds.n_ratings == 1


def test_missing_column_in_header(client, tmp_path):
    src = write(tmp_path / "r.csv", "u,i,r\n1,2,3\n")
    with pytest.raises(IngestError) as exc:
        ingest(src, tmp_path / "out")
    error_at(exc, src, 1)
    assert exc.value.problem.startswith("no column 'user_id' in the header ['u', 'i', 'r']")
    ds = ingest(src, tmp_path / "out", user_col="u", item_col="i", rating_col="r")
    assert ds.n_ratings == 1
    assert ds.ratings().compute()["timestamp"].tolist() == [0]


def test_destination_already_holds_a_dataset(client, tmp_path):
    src = write(tmp_path / "r.csv", HEADER + good_lines(10))
    dest = tmp_path / "out"
    first = ingest(src, dest)
    with pytest.raises(FileExistsError, match=r"already holds an mfdask dataset \(10 ratings\)"):
        ingest(src, dest)
    assert first.manifest == ingest(src, dest, overwrite=True).manifest
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("x")
    with pytest.raises(FileExistsError, match="is not an mfdask dataset: refusing"):
        ingest(src, other, overwrite=True)
    assert (other / "precious.txt").exists()


def test_all_rows_bad_is_an_error_even_when_skipping(client, tmp_path):
    src = write(tmp_path / "r.csv", HEADER + "1,2,x,1\n1,3,y,1\n")
    with pytest.raises(BadRowsError, match="all 2 rows are bad"):
        ingest(src, tmp_path / "out", on_bad_rows="skip")
    assert_nothing_written(tmp_path / "out")


def test_unknown_policies(client, tmp_path):
    src = write(tmp_path / "r.csv", HEADER + good_lines(2))
    with pytest.raises(ValueError, match="on_bad_rows must be one of"):
        ingest(src, tmp_path / "o", on_bad_rows="ignore")
    with pytest.raises(ValueError, match="duplicates must be one of"):
        ingest(src, tmp_path / "o", duplicates="first")


def test_accounting_check_raises():
    check_accounting(Accounting(rows_in=10, rows_out=7, quarantined=2, duplicates_merged=1))
    with pytest.raises(AccountingError, match="rows do not add up: 10 read != 7 written"):
        check_accounting(Accounting(rows_in=10, rows_out=7, quarantined=2, duplicates_merged=0))


def test_quarantine_absent_when_clean(client, tmp_path):
    src = write(tmp_path / "r.csv", HEADER + good_lines(10))
    ds = ingest(src, tmp_path / "out", on_bad_rows="skip")
    assert is_dataset(ds.path)
    assert not (ds.path / schema.QUARANTINE_FILE).exists()
    assert ds.manifest["rows_quarantined"] == 0
