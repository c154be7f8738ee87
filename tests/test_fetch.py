"""MovieLens fetch without a network: fast failure with a helpful message, and no-ops."""

from __future__ import annotations

import hashlib
import io
import time
import zipfile

import pytest

from mfdask.cli import main as cli_main
from mfdask.data import fetch as fetch_mod
from mfdask.data.fetch import FetchError, data_root, fetch, find_movielens

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens there


def test_unreachable_fails_fast_with_how_to_use_a_local_copy(tmp_path):
    start = time.monotonic()
    with pytest.raises(FetchError) as exc:
        fetch("ml-1m", tmp_path, base_url=UNREACHABLE, timeout=2)
    assert time.monotonic() - start < 5
    message = str(exc.value)
    assert message.startswith(f"cannot download {UNREACHABLE}/ml-1m.zip")
    assert "--data DIR or MFDASK_DATA=DIR (DIR/ml-1m/ratings.dat)" in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []  # no partial download left behind


def test_cli_fetch_offline_exit_code(tmp_path, capsys):
    code = cli_main(["fetch", "ml-100k", "--data", str(tmp_path), "--base-url", UNREACHABLE])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mfdask fetch: error: cannot download")
    assert len(err.splitlines()) == 1


def test_already_present_is_a_no_op(tmp_path, monkeypatch):
    (tmp_path / "ml-1m").mkdir()
    (tmp_path / "ml-1m" / "ratings.dat").write_text("1::1::5::1\n")

    def no_network(*args, **kwargs):
        raise AssertionError("must not download")

    monkeypatch.setattr(fetch_mod.urllib.request, "urlopen", no_network)
    assert fetch("ml-1m", tmp_path, base_url=UNREACHABLE) == tmp_path / "ml-1m"
    monkeypatch.setenv("MFDASK_DATA", str(tmp_path))
    assert fetch("ml-1m", base_url=UNREACHABLE) == tmp_path / "ml-1m"


def test_find_movielens_order(tmp_path, monkeypatch):
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    for root in (explicit, env):
        (root / "ml-100k").mkdir(parents=True)
        (root / "ml-100k" / "u.data").write_text("1\t1\t5\t1\n")
    monkeypatch.setenv("MFDASK_DATA", str(env))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert find_movielens("ml-100k", explicit) == explicit / "ml-100k"
    assert find_movielens("ml-100k", explicit / "ml-100k") == explicit / "ml-100k"
    assert find_movielens("ml-100k") == env / "ml-100k"
    assert find_movielens("ml-1m") is None
    monkeypatch.delenv("MFDASK_DATA")
    assert data_root() == tmp_path / "home" / ".cache" / "mfdask"
    with pytest.raises(ValueError, match="unknown dataset 'ml-2m'"):
        find_movielens("ml-2m")


class _Response(io.BytesIO):
    """What ``urlopen`` returns, enough for a download: a body and no headers."""

    @property
    def headers(self) -> dict[str, str]:
        return {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _zip_bytes(top: str, files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(f"{top}/{name}", text)
    return buf.getvalue()


def test_download_checks_md5_and_unpacks_atomically(tmp_path, monkeypatch):
    payload = _zip_bytes("ml-10M100K", {"ratings.dat": "1::1::5::1\n", "movies.dat": "1::A::B\n"})
    monkeypatch.setattr(
        fetch_mod.urllib.request, "urlopen", lambda url, timeout: _Response(payload)
    )
    good = fetch_mod.MovieLensArchive("ml-10m", "ratings.dat", hashlib.md5(payload).hexdigest())
    monkeypatch.setitem(fetch_mod.ARCHIVES, "ml-10m", good)
    path = fetch("ml-10m", tmp_path)
    assert path == tmp_path / "ml-10m"
    assert (path / "ratings.dat").read_text() == "1::1::5::1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ml-10m"]

    bad = fetch_mod.MovieLensArchive("ml-1m", "ratings.dat", "0" * 32)
    monkeypatch.setitem(fetch_mod.ARCHIVES, "ml-1m", bad)
    with pytest.raises(FetchError, match="expected 00000000000000000000000000000000"):
        fetch("ml-1m", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ml-10m"]


def test_latest_small_uses_published_md5_file(tmp_path, monkeypatch):
    payload = _zip_bytes("ml-latest-small", {"ratings.csv": "userId,movieId,rating,timestamp\n"})
    digest = hashlib.md5(payload).hexdigest()

    def urlopen(url, timeout):
        if url.endswith(".md5"):
            return _Response(f"MD5 (ml-latest-small.zip) = {digest}\n".encode())
        return _Response(payload)

    monkeypatch.setattr(fetch_mod.urllib.request, "urlopen", urlopen)
    assert (fetch("ml-latest-small", tmp_path) / "ratings.csv").is_file()


def test_known_archives_have_pinned_md5():
    for name in ("ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m"):
        md5 = fetch_mod.ARCHIVES[name].md5
        assert md5 is not None and len(md5) == 32
    assert fetch_mod.ARCHIVES["ml-1m"].url() == (
        "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
    )
