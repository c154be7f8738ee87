"""A run report: loss curves and metrics as PNG plots, and one self-contained HTML page.

The page inlines its images as base64 ``data:`` URIs and its tables as HTML, so it can
be mailed or archived as a single file beside the job's outputs. Plots use matplotlib's
``Agg`` backend: no display is needed on a worker or a CI machine.

Each model records one dict per epoch in ``history_``; the curve drawn is its training
objective under whichever name the model uses (``loss`` for ALS/BPR/WARP,
``train_rmse`` for SVD), against ``epoch`` or ``iteration``, plus a validation curve when
one was recorded. Losses of different models are on different scales, so each model gets
its own panel.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mfdask._warnings import HistoryRecord

LOSS_KEYS = ("loss", "train_rmse", "objective")
"""History fields that hold the training objective, in order of preference."""

VALIDATION_PREFIXES = ("validation", "ndcg", "precision", "recall", "map", "hit_rate", "auc")
"""History fields drawn as a second curve: validation metrics, and BPR/WARP's sampled AUC."""

METRIC_ROWS = (
    "precision",
    "recall",
    "ndcg",
    "map",
    "hit_rate",
    "auc",
    "coverage",
    "rmse",
    "mae",
)
"""Metrics drawn in the metrics chart (those present), all on a 0..1-ish scale but RMSE."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def loss_curve(history: Sequence[Mapping[str, Any]]) -> tuple[str, list[float], list[float]]:
    """``(name, x, y)`` of the training objective in ``history`` (empty if none recorded)."""
    for key in LOSS_KEYS:
        points = [
            (float(HistoryRecord(r).get("iteration", i + 1)), float(r[key]))
            for i, r in enumerate(history)
            if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
        ]
        if points:
            return key, [p[0] for p in points], [p[1] for p in points]
    return "", [], []


def _curve_label(key: str) -> str:
    # BPR/WARP record "auc": the share of sampled training triples ranked right, not a
    # held-out metric; every other secondary curve is computed on validation data.
    return "train auc (sampled triples)" if key == "auc" else key


def _validation_curves(history: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for i, r in enumerate(history):
        for key, value in r.items():
            if key.startswith(VALIDATION_PREFIXES) and isinstance(value, (int, float)):
                if math.isfinite(value):
                    x = float(HistoryRecord(r).get("iteration", i + 1))
                    out.setdefault(key, []).append((x, float(value)))
    return out


def plot_losses(
    histories: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike[str]
) -> Path | None:
    """One panel per model: its training objective per epoch (and validation, if any).

    Returns the PNG's path, or None when no model recorded a loss.
    """
    curves = {name: loss_curve(h) for name, h in histories.items()}
    curves = {name: c for name, c in curves.items() if c[1]}
    if not curves:
        return None
    plt = _pyplot()
    n = len(curves)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.4 * rows), squeeze=False)
    for ax, (name, (key, x, y)) in zip(axes.ravel(), curves.items(), strict=False):
        ax.plot(x, y, marker="o", markersize=3, label=f"train {key}")
        ax.set_title(name)
        ax.set_xlabel("iteration (epoch for SGD models)")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        validation = _validation_curves(histories[name])
        if validation:
            twin = ax.twinx()
            for vkey, points in validation.items():
                twin.plot(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    linestyle="--",
                    color="tab:orange",
                    label=_curve_label(vkey),
                )
                twin.set_ylabel(vkey)
            lines = ax.get_lines() + twin.get_lines()
            ax.legend(lines, [line.get_label() for line in lines], fontsize=8)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def metrics_frame(metrics: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Models side by side: one row per metric in :data:`METRIC_ROWS`, one column per model."""
    rows = [m for m in METRIC_ROWS if any(m in v for v in metrics.values())]
    return pd.DataFrame(
        {
            name: [float(v[m]) if isinstance(v.get(m), (int, float)) else math.nan for m in rows]
            for name, v in metrics.items()
        },
        index=rows,
    )


def plot_metrics(
    metrics: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str], k: int | None = None
) -> Path | None:
    """Grouped bars: each ranking metric for each model (RMSE/MAE in a separate panel)."""
    frame = metrics_frame(metrics)
    if frame.empty:
        return None
    plt = _pyplot()
    ranking = frame.drop(index=[r for r in ("rmse", "mae") if r in frame.index])
    rating = frame.loc[[r for r in ("rmse", "mae") if r in frame.index]]
    rating = rating.dropna(axis=1, how="all")
    panels = [(ranking, f"ranking metrics{f' @{k}' if k else ''}")]
    if not rating.empty:
        panels.append((rating, "rating error (explicit models)"))
    widths = [max(len(ranking), 1), max(len(rating), 1) * 0.6][: len(panels)]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(10, 3.8), squeeze=False, gridspec_kw={"width_ratios": widths}
    )
    for ax, (table, title) in zip(axes.ravel(), panels, strict=True):
        table.plot.bar(ax=ax, rot=0, width=0.8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


TRIAL_STYLES = {
    "COMPLETE": ("o", "tab:blue"),
    "PRUNED": ("x", "tab:gray"),
    "FAIL": ("v", "tab:red"),
}
"""Marker and colour of each trial state in :func:`plot_trials`."""


def plot_trials(
    trials: pd.DataFrame,
    path: str | os.PathLike[str],
    metric: str,
    higher_is_better: bool = True,
) -> Path | None:
    """A tuning run (:func:`mfdask.tune`): each trial's validation score by trial number
    (completed, pruned at their best so far, failed along the bottom) and the best
    completed score so far as a step line.

    Returns the PNG's path, or None when there are no trials.
    """
    if trials is None or len(trials) == 0:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    scores = pd.to_numeric(trials["score"], errors="coerce")
    finite = scores[np.isfinite(scores)]
    floor = float(finite.min() if higher_is_better else finite.max()) if len(finite) else 0.0
    for state, (marker, colour) in TRIAL_STYLES.items():
        rows = trials["state"] == state
        if not rows.any():
            continue
        y = scores[rows].to_numpy(dtype=float)
        if state == "FAIL":
            y = np.where(np.isfinite(y), y, floor)
        ax.scatter(trials.loc[rows, "number"], y, marker=marker, color=colour, label=state.lower())
    done = trials["state"] == "COMPLETE"
    if done.any():
        ordered = scores.where(done)
        best = (ordered.cummax() if higher_is_better else ordered.cummin()).ffill()
        ax.step(trials["number"], best, where="post", color="tab:orange", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(f"tuning: {len(trials)} trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _img(path: Path | None, alt: str) -> str:
    if path is None:
        return f"<p><em>{html.escape(alt)}: nothing recorded.</em></p>"
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(frame: pd.DataFrame, float_format: str = "{:.4f}") -> str:
    return frame.to_html(
        float_format=lambda v: float_format.format(v) if math.isfinite(v) else "n/a",
        border=0,
        classes="t",
        na_rep="",
    )


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } .sub { color: #666; margin-top: 0; }
.banner { background: #fff3cd; border: 1px solid #e0c36c; padding: 0.6em 1em; }
table.t { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
table.t th, table.t td { padding: 0.25em 0.7em; border-bottom: 1px solid #ddd; text-align: right; }
table.t th { background: #f5f5f5; } img { max-width: 100%; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


def write_report(
    dest: str | os.PathLike[str],
    *,
    title: str,
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    metrics: Mapping[str, Mapping[str, Any]],
    k: int | None = None,
    subtitle: str = "",
    banner: str | None = None,
    sections: Sequence[tuple[str, pd.DataFrame | str]] = (),
) -> Path:
    """Write ``loss.png``, ``metrics.png`` and ``report.html`` into ``dest``.

    Parameters
    ----------
    dest : path
        An existing directory (the job's output directory).
    title, subtitle : str
        Page heading.
    histories : mapping
        Model name -> ``model.history_``.
    metrics : mapping
        Model name -> metrics dict (as from :func:`mfdask.evaluate.evaluate`).
    k : int, optional
        The ranking cut-off, for labels.
    banner : str, optional
        A highlighted notice at the top (e.g. that the data is synthetic).
    sections : sequence of (heading, DataFrame or text)
        Further tables (or preformatted text) appended to the page.

    Returns
    -------
    Path
        The HTML page.
    """
    dest = Path(dest)
    loss_png = plot_losses(histories, dest / "loss.png")
    metrics_png = plot_metrics(metrics, dest / "metrics.png", k)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if subtitle:
        parts.append(f"<p class='sub'>{html.escape(subtitle)}</p>")
    if banner:
        parts.append(f"<p class='banner'>{html.escape(banner)}</p>")
    table = metrics_frame(metrics)
    if not table.empty:
        if k:
            table.index = [
                f"{m}@{k}" if m in ("precision", "recall", "ndcg", "map", "hit_rate") else m
                for m in table.index
            ]
        parts += [f"<h2>Metrics{f' (k = {k})' if k else ''}</h2>", _table(table)]
    parts += [
        "<h2>Metrics by model</h2>",
        _img(metrics_png, "metrics"),
        "<h2>Training loss per epoch</h2>",
        _img(loss_png, "loss per epoch"),
    ]
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if isinstance(body, pd.DataFrame):
            parts.append(body.to_html(border=0, classes="t", index=False, na_rep=""))
        else:
            parts.append(f"<pre>{html.escape(str(body))}</pre>")
    parts.append("</body></html>")
    out = dest / "report.html"
    tmp = dest / ".report.html.tmp"
    tmp.write_text("\n".join(parts), encoding="utf-8")
    os.replace(tmp, out)
    return out


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG from its header (for checks without an image library)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def decode_inline_images(page: str) -> list[bytes]:
    """The PNG images inlined in a page written by :func:`write_report`."""
    marker = "data:image/png;base64,"
    out = []
    start = page.find(marker)
    while start >= 0:
        end = page.find('"', start)
        out.append(base64.b64decode(page[start + len(marker) : end]))
        start = page.find(marker, end)
    return out
