"""The run's learning-curve figure: a valid SVG that shows what the history holds."""

import math
import xml.etree.ElementTree as ET

import pytest

from tunelab.curves_svg import _log_ticks, _ticks, learning_curves

NS = "{http://www.w3.org/2000/svg}"


def _history(n=6):
    return {
        "train/loss": [2.0 - 0.3 * i for i in range(n)],
        "val/loss": [2.1 - 0.25 * i for i in range(n)],
        "train/acc": [0.1 * i for i in range(n)],
        "val/acc": [0.09 * i for i in range(n)],
        "opt/lr": [1e-3 * (i + 1) for i in range(n)],
    }


def _texts(root):
    return [t.text for t in root.iter(f"{NS}text")]


def test_three_panels_every_series_and_the_selected_epoch():
    root = ET.fromstring(learning_curves(_history(), best_epoch=3))
    texts = _texts(root)
    assert {"loss", "accuracy", "learning rate"} <= set(texts)
    assert {"train/loss", "val/loss", "train/acc", "val/acc", "opt/lr"} <= set(texts)
    assert texts.count("selected epoch") == 2  # loss and accuracy panels, not the lr panel
    lines = root.findall(f"{NS}polyline")
    assert len(lines) == 5
    assert all(len(pl.get("points").split()) == 6 for pl in lines)
    dashed = [ln for ln in root.iter(f"{NS}line") if ln.get("stroke-dasharray")]
    assert len({ln.get("x1") for ln in dashed if ln.get("y1") != ln.get("y2")}) == 2


def test_non_finite_values_break_the_line_and_non_positive_lr_is_left_out():
    h = _history()
    h["val/loss"][2] = math.nan
    h["train/loss"][4] = math.inf
    h["opt/lr"][0] = 0.0
    root = ET.fromstring(learning_curves(h))
    points = [len(pl.get("points").split()) for pl in root.findall(f"{NS}polyline")]
    # train/loss split 4+1, val/loss 2+3, accs 6 each, lr 5 (its zero cannot go on a log axis)
    assert sorted(points) == sorted([4, 1, 2, 3, 6, 6, 5])
    assert "nan" not in learning_curves(h).lower()
    assert "selected epoch" not in _texts(root)  # no best epoch given


@pytest.mark.parametrize("n", [0, 1])
def test_empty_and_single_epoch_histories_still_draw(n):
    root = ET.fromstring(learning_curves(_history(n), best_epoch=0 if n else None))
    assert root.tag == f"{NS}svg"
    assert len(root.findall(f"{NS}polyline")) == (5 if n else 0)


def test_names_are_escaped():
    svg = learning_curves({"train/loss": [1.0, 0.5], "val/acc": [0.5, 0.6]} | {"a<b&c": [1]})
    ET.fromstring(svg)  # still well-formed


def test_ticks_are_round_and_inside_the_range():
    assert _ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert _ticks(1.0, 15.0, integer=True) == [5.0, 10.0, 15.0]
    assert _ticks(0.5, 1.5, integer=True) == [1.0]  # a single epoch: integer steps only
    for lo, hi in [(0.93, 0.995), (-3.2, 7.7), (1e-5, 3e-5)]:
        ticks = _ticks(lo, hi)
        assert 2 <= len(ticks) <= 11
        assert all(lo - 1e-12 <= t <= hi + 1e-12 for t in ticks)
    assert _log_ticks(-4.2, -1.5) == [-4.0, -3.0, -2.0]
