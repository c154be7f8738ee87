"""The run report: loss and metrics plots, one self-contained HTML page."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from mfdask.report import (
    decode_inline_images,
    loss_curve,
    metrics_frame,
    plot_losses,
    png_size,
    write_report,
)

HISTORIES = {
    # The history shapes the models record: ALS counts iterations, SVD reports RMSE.
    "ALS": [{"iteration": i + 1, "loss": 1.0 / (i + 1), "seconds": 0.1} for i in range(5)],
    "SVD": [
        {"epoch": i + 1, "train_rmse": 1.2 - 0.1 * i, "validation_rmse": 1.25 - 0.05 * i}
        for i in range(4)
    ],
    "BPR": [{"epoch": i + 1, "loss": 0.69 - 0.05 * i, "auc": 0.5 + 0.1 * i} for i in range(3)],
}
METRICS = {
    "SVD": {"precision": 0.05, "ndcg": 0.06, "auc": 0.8, "rmse": 0.87, "mae": 0.68},
    "ALS": {"precision": 0.2, "ndcg": 0.25, "auc": 0.9},
}


def test_loss_curve_picks_the_models_objective():
    assert loss_curve(HISTORIES["ALS"]) == ("loss", [1, 2, 3, 4, 5], [1, 0.5, 1 / 3, 0.25, 0.2])
    name, x, y = loss_curve(HISTORIES["SVD"])
    assert name == "train_rmse" and x == [1, 2, 3, 4] and y[0] == pytest.approx(1.2)
    assert loss_curve([{"epoch": 1, "seconds": 2.0}]) == ("", [], [])
    nan_dropped = loss_curve([{"epoch": 1, "loss": math.nan}, {"epoch": 2, "loss": 1.0}])
    assert nan_dropped == ("loss", [2.0], [1.0])


def test_metrics_frame_side_by_side():
    frame = metrics_frame(METRICS)
    assert list(frame.columns) == ["SVD", "ALS"]
    assert list(frame.index) == ["precision", "ndcg", "auc", "rmse", "mae"]
    assert frame.loc["rmse", "SVD"] == 0.87 and math.isnan(frame.loc["rmse", "ALS"])


def test_no_loss_recorded_gives_no_plot(tmp_path):
    assert plot_losses({"X": [{"epoch": 1}]}, tmp_path / "loss.png") is None
    assert not (tmp_path / "loss.png").exists()


def test_report_is_one_self_contained_page(tmp_path):
    table = pd.DataFrame({"ALS": ["Toy Story 2 (1999)", "Aladdin (1992)"]})
    page = write_report(
        tmp_path,
        title="demo <run>",
        histories=HISTORIES,
        metrics=METRICS,
        k=10,
        banner="SYNTHETIC DATA",
        sections=[("Similar to Toy Story", table), ("notes", "plain & text")],
    )
    text = page.read_text()
    assert page == tmp_path / "report.html"
    # Both plots are written beside the page and inlined in it, byte for byte.
    images = decode_inline_images(text)
    assert images == [(tmp_path / "metrics.png").read_bytes(), (tmp_path / "loss.png").read_bytes()]
    for data in images:
        width, height = png_size(data)
        assert width > 300 and height > 200
    # Nothing is fetched from elsewhere: no external links, scripts or stylesheets.
    assert "http" not in text.replace("http-equiv", "") and "<script" not in text
    assert "demo &lt;run&gt;" in text and "SYNTHETIC DATA" in text
    assert "precision@10" in text and "0.8700" in text
    assert "Toy Story 2 (1999)" in text and "plain &amp; text" in text
    assert not list(tmp_path.glob(".*"))
