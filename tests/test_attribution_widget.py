"""The attributions dock widget in a real viewer: selection -> compute -> one lazy layer per
method placed exactly on the patches, shared scale, probabilities beside the patches."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari_pathviz._widgets.attribution import (  # noqa: E402
    LAYER_PREFIX,
    META_ATTRIBUTION,
    AttributionWidget,
)
from napari_pathviz.attribution.layer import attribution_pyramid  # noqa: E402


def test_pyramid_puts_each_map_on_its_patch():
    maps = np.stack([np.full((4, 4), 1.0), np.arange(16.0).reshape(4, 4)])
    x, y, sizes = np.array([8, 24]), np.array([0, 16]), np.array([4, 4])
    level0, level1 = attribution_pyramid(maps, x, y, sizes, [(40, 40), (20, 20)])
    full = level0.compute()
    np.testing.assert_array_equal(full[0:4, 8:12], 1.0)
    np.testing.assert_array_equal(full[16:20, 24:28], maps[1])
    assert np.isnan(full).sum() == 40 * 40 - 32  # transparent everywhere else
    half = level1.compute()
    assert half.shape == (20, 20) and np.isfinite(half[0:2, 4:6]).all()
    np.testing.assert_allclose(half[8:10, 12:14].mean(), maps[1].mean(), rtol=0.2)


@pytest.fixture
def demo_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-pathviz", "demo")
    widget = AttributionWidget(viewer)
    widget.form.prefill_demo()
    return viewer, widget, viewer.layers[-1]


def test_selection_to_attribution_layer(demo_viewer, qtbot, tmp_path):
    viewer, widget, patches = demo_viewer
    rows = [0, 430, 860]  # far apart: no explained neighbour touches the first
    patches.selected_data = set(rows)
    widget.n_samples.value = 32
    widget.n_background.value = 8
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    assert widget.status.value.startswith("gradient: 3 patches"), widget.status.value
    heat = viewer.layers[f"{LAYER_PREFIX}gradient"]
    assert heat.multiscale and heat.data[0].shape == (2304, 2816)
    meta = heat.metadata[META_ATTRIBUTION]
    np.testing.assert_array_equal(meta["rows"], rows)
    # The map sits exactly on its patch: finite inside, NaN just outside.
    f = patches.features
    x, y, p = (int(f[c].iat[rows[0]]) for c in ("x", "y", "patch_size"))
    window = np.asarray(heat.data[0][y - 1 : y + p + 1, x - 1 : x + p + 1])
    assert np.isfinite(window[1:-1, 1:-1]).all()
    assert np.isnan(window[0]).all() and np.isnan(window[-1]).all()
    # One symmetric scale shared by all patches, red/blue transparent at zero.
    low, high = heat.contrast_limits
    assert high > 0 and low == -high
    assert heat.colormap.map(np.array([0.5]))[0, 3] == 0
    probability = f["gradient_probability"].to_numpy()
    assert np.isfinite(probability[rows]).all() and np.isnan(np.delete(probability, rows)).all()
    widget.gallery_path.value = str(tmp_path / "gallery.png")
    widget.gallery_button.clicked.emit()
    assert (tmp_path / "gallery.png").stat().st_size > 10_000


def test_top_n_with_gradcam(demo_viewer, qtbot):
    viewer, widget, patches = demo_viewer
    widget.method.value = "gradcam"
    widget.which.value = "top N"
    widget.top_n.value = 4
    widget.top_column.reset_choices()
    widget.top_column.value = "dab_positive"
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    heat = viewer.layers[f"{LAYER_PREFIX}gradcam"]
    rows = heat.metadata[META_ATTRIBUTION]["rows"]
    expected = np.argsort(-patches.features["dab_positive"].to_numpy(), kind="stable")[:4]
    np.testing.assert_array_equal(rows, expected)


def test_empty_selection_and_bad_target(demo_viewer, qtbot, notifications):
    _viewer, widget, patches = demo_viewer
    patches.selected_data = set()
    widget.run_button.clicked.emit()
    assert any("select patches first" in m for m in notifications)
    patches.selected_data = {1}
    widget.target.value = "7"
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    assert any("target class 7 is out of range" in m for m in notifications)
