"""The one progress bar: tqdm, hidden everywhere by ``MFDASK_NO_PROGRESS=1``.

Fits (the trainer), searches (:func:`mfdask.tune`) and downloads (``mfdask fetch``) all
draw their bar here, so one switch silences them (CI logs, batch jobs).
"""

from __future__ import annotations

import os
from typing import Any

NO_PROGRESS_ENV = "MFDASK_NO_PROGRESS"


def progress_hidden() -> bool:
    """Whether ``MFDASK_NO_PROGRESS`` asks for no bars (``1``, ``true``, ``yes``)."""
    return os.environ.get(NO_PROGRESS_ENV, "").strip().lower() in ("1", "true", "yes")


def progress_bar(show: bool, total: int | None, unit: str, **options: Any) -> Any:
    """A tqdm bar over ``total`` ``unit``\\ s, or None when ``show`` is false.

    ``options`` go to tqdm (``unit_scale``, ``desc``, ``file``); the bar is disabled when
    :func:`progress_hidden`.
    """
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, disable=progress_hidden(), **options)
