"""Download the MovieLens archives from GroupLens into a local cache, checked and unpacked.

Layout: ``$ROOT/<name>/`` holds the files of the archive (``$ROOT/ml-1m/ratings.dat``),
where ``$ROOT`` is an explicit ``data`` directory, else ``$MFDASK_DATA``, else
``~/.cache/mfdask``. A dataset already there is not downloaded again. The archive is
streamed to a temporary file, its MD5 is compared with the one GroupLens publishes
(pinned here for the frozen releases; fetched from the ``.md5`` file beside the archive
for ``ml-latest-small``, which GroupLens updates), and it is unpacked into a temporary
directory that is renamed into place, so an interrupted fetch leaves nothing half-done.

The MovieLens data is (c) GroupLens Research, University of Minnesota, under the usage
license in each archive's README (research use; no redistribution). Cite F. M. Harper
and J. A. Konstan, "The MovieLens Datasets: History and Context", ACM TiiS 5(4), 2015.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sys
import urllib.error
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

from mfdask._progress import progress_bar
from mfdask.errors import FetchError

log = logging.getLogger("mfdask")

BASE_URL = "https://files.grouplens.org/datasets/movielens"
DATA_ENV = "MFDASK_DATA"
DEFAULT_TIMEOUT = 10.0
"""Seconds a connection may stay silent: without a network, fetch fails this fast."""


@dataclass(frozen=True)
class MovieLensArchive:
    """One GroupLens release: its archive name, a file that marks it unpacked, its MD5."""

    name: str
    marker: str
    md5: str | None
    """Published MD5 of ``<name>.zip``; None: read the ``.md5`` file GroupLens publishes."""
    home: str | None = None
    """The archive's own directory on GroupLens (None: :data:`BASE_URL`, MovieLens)."""
    published_md5: bool = True
    """Whether GroupLens publishes a ``.md5`` beside the archive (HetRec: no)."""

    def url(self, base_url: str = BASE_URL) -> str:
        base = self.home if self.home is not None and base_url == BASE_URL else base_url
        return f"{base.rstrip('/')}/{self.name}.zip"


ARCHIVES: dict[str, MovieLensArchive] = {
    a.name: a
    for a in (
        MovieLensArchive("ml-100k", "u.data", "0e33842e24a9c977be4e0107933c0723"),
        MovieLensArchive("ml-1m", "ratings.dat", "c4d9eecfca2ab87c1945afe126590906"),
        MovieLensArchive("ml-10m", "ratings.dat", "ce571fd55effeba0271552578f2648bd"),
        MovieLensArchive("ml-20m", "ratings.csv", "cd245b17a1ae2cc31bb14903e1204af3"),
        MovieLensArchive("ml-25m", "ratings.csv", "6b51fb2759a8657d3bfcbfc42b592ada"),
        MovieLensArchive("ml-latest-small", "ratings.csv", None),
    )
}
ARCHIVES["lastfm-2k"] = MovieLensArchive(
    "hetrec2011-lastfm-2k",
    "user_artists.dat",
    None,
    home="https://files.grouplens.org/datasets/hetrec2011",
    published_md5=False,
)
"""HetRec 2011 Last.fm-2k (user, artist, play count; artists.dat with names): play counts,
an event dataset (``mfdask demo --dataset lastfm-2k``). Unpacked as
``hetrec2011-lastfm-2k/``. (c) GroupLens / Last.fm, HetRec 2011 (RecSys 2011 workshop)."""


def data_root(data: str | os.PathLike[str] | None = None) -> Path:
    """``data``, else ``$MFDASK_DATA``, else ``~/.cache/mfdask``."""
    if data:
        return Path(data).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "mfdask"


def _archive(name: str) -> MovieLensArchive:
    try:
        return ARCHIVES[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}: use one of {', '.join(ARCHIVES)}") from None


def find_movielens(name: str, data: str | os.PathLike[str] | None = None) -> Path | None:
    """The directory holding MovieLens ``name``, or None if it is nowhere local.

    Looks in ``data`` (the dataset directory itself or a root holding ``<name>/``), then
    ``$MFDASK_DATA/<name>``, then ``~/.cache/mfdask/<name>``.
    """
    archive = _archive(name)
    name = archive.name  # the directory: lastfm-2k unpacks as hetrec2011-lastfm-2k/
    candidates: list[Path] = []
    if data:
        d = Path(data).expanduser()
        candidates += [d, d / name]
    env = os.environ.get(DATA_ENV)
    if env:
        candidates.append(Path(env).expanduser() / name)
    candidates.append(Path.home() / ".cache" / "mfdask" / name)
    for c in candidates:
        if (c / archive.marker).is_file():
            return c
    return None


def _offline_hint(name: str, url: str, root: Path, reason: object) -> str:
    return (
        f"cannot download {url} ({reason}); if this machine has no network, download and "
        f"unzip it elsewhere, then point at the copy with --data DIR or {DATA_ENV}=DIR "
        f"(DIR/{ARCHIVES[name].name}/{ARCHIVES[name].marker}); default DIR: {root}"
    )


def _download(url: str, out: Path, timeout: float, progress: bool) -> str:
    """Stream ``url`` to ``out``; return the MD5 of what was written."""
    md5 = hashlib.md5()
    with urllib.request.urlopen(url, timeout=timeout) as response, open(out, "wb") as f:
        total = int(response.headers.get("Content-Length") or 0) or None
        bar = progress_bar(progress, total, "B", unit_scale=True, desc=out.name, file=sys.stderr)
        try:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                f.write(chunk)
                md5.update(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
    return md5.hexdigest()


def _published_md5(url: str, timeout: float) -> str:
    """Read GroupLens' ``<archive>.zip.md5`` (``MD5 (ml-latest-small.zip) = <hex>``)."""
    with urllib.request.urlopen(url + ".md5", timeout=timeout) as response:
        text = response.read(4096).decode("ascii", errors="replace")
    match = re.search(r"\b([0-9a-fA-F]{32})\b", text)
    if not match:
        raise FetchError(f"{url}.md5 does not hold an MD5 checksum: {text[:80]!r}")
    return match.group(1).lower()


def fetch(
    name: str,
    data: str | os.PathLike[str] | None = None,
    *,
    base_url: str = BASE_URL,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool | None = None,
) -> Path:
    """Make MovieLens ``name`` available under the data root and return its directory.

    Parameters
    ----------
    name : str
        ``ml-100k``, ``ml-1m``, ``ml-10m``, ``ml-20m``, ``ml-25m`` or ``ml-latest-small``.
    data : path, optional
        The data root (default ``$MFDASK_DATA``, else ``~/.cache/mfdask``).
    base_url : str
        Where the archives are (the GroupLens site; a mirror or a test server).
    timeout : float
        Socket timeout in seconds: without a network the fetch fails this fast.
    progress : bool, optional
        Show a progress bar (default: when stderr is a terminal).

    Raises
    ------
    FetchError
        The download failed (with how to use a local copy instead) or its checksum did
        not match the published one.
    """
    archive = _archive(name)
    root = data_root(data)
    target = root / archive.name
    if (target / archive.marker).is_file():
        log.info("%s is already in %s", name, target)
        return target
    if target.exists():
        raise FetchError(f"{target} exists but has no {archive.marker}: remove it and fetch again")
    root.mkdir(parents=True, exist_ok=True)
    url = archive.url(base_url)
    tag = uuid.uuid4().hex[:8]
    part = root / f".{name}.zip.part-{tag}"
    unpack = root / f".{name}.unpack-{tag}"
    if progress is None:
        progress = sys.stderr.isatty()
    try:
        try:
            expected = archive.md5 or (
                _published_md5(url, timeout) if archive.published_md5 else None
            )
            log.info("downloading %s", url)
            got = _download(url, part, timeout, progress)
        except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise FetchError(_offline_hint(name, url, root, reason)) from exc
        if expected is None:
            log.info("%s: GroupLens publishes no checksum for it (MD5 %s)", url, got)
        elif got != expected:
            raise FetchError(
                f"{url} has MD5 {got}, expected {expected}: the download is corrupt or the "
                "archive changed; try again, or download it by hand and use --data"
            )
        with zipfile.ZipFile(part) as zf:
            zf.extractall(unpack)
        found = sorted(unpack.rglob(archive.marker), key=lambda p: len(p.parts))
        if not found:
            raise FetchError(f"{url} does not contain {archive.marker}")
        os.replace(found[0].parent, target)  # ml-10m unpacks as ml-10M100K/
    finally:
        part.unlink(missing_ok=True)
        shutil.rmtree(unpack, ignore_errors=True)
    log.info("%s is in %s", name, target)
    return target
