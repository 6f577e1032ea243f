"""The attributions dock widget in a real viewer: selection -> compute -> one lazy layer per
method placed exactly on the patches, shared scale, probabilities beside the patches."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari_pathviz._widgets._attribution_layers import (  # noqa: E402
    LAYER_PREFIX,
    META_ATTRIBUTION,
)
from napari_pathviz._widgets.attribution import AttributionWidget  # noqa: E402
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
    rows = [0, 125, 249]  # far apart: no explained neighbour touches the first
    patches.selected_data = set(rows)
    viewer.layers.selection.active = patches
    widget.n_samples.value = 32
    widget.n_background.value = 8
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    assert widget.status.value.startswith("gradient: 3 patches"), widget.status.value
    # The patches stay the active layer, ready for the next selection.
    assert viewer.layers.selection.active is patches
    heat = viewer.layers[f"{LAYER_PREFIX}gradient"]
    assert heat.multiscale and heat.data[0].shape == viewer.layers[0].data[0].shape[:2]
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
    # The same gallery, viewed in a dock beside the slide.
    from napari_pathviz._widgets._gallery_view import GALLERY_DOCK

    widget.show_gallery_button.clicked.emit()
    view = viewer.window.dock_widgets[GALLERY_DOCK]
    pixmap = view.label.pixmap()
    assert pixmap.width() > 500 and pixmap.height() > 200
    widget.show_gallery_button.clicked.emit()  # shown again: the same dock, not a second one
    assert list(viewer.window.dock_widgets).count(GALLERY_DOCK) == 1


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
    from napari_pathviz.attribution.gallery import distinct_rows

    ranked = np.argsort(-patches.features["dab_positive"].to_numpy(), kind="stable")
    expected = distinct_rows(patches.features, ranked, 4)  # as the CLI's --top: no neighbours
    np.testing.assert_array_equal(rows, expected)
    assert rows[0] == ranked[0] and len(set(rows.tolist())) == 4


def test_empty_selection_and_bad_target(demo_viewer, qtbot, notifications):
    _viewer, widget, patches = demo_viewer
    patches.selected_data = set()
    widget.run_button.clicked.emit()
    assert any("select patches first" in m for m in notifications)
    widget.show_gallery_button.clicked.emit()
    assert any("Gallery: explain some patches first" in m for m in notifications)
    patches.selected_data = {1}
    widget.target.value = "7"
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    assert any("target class 7 is out of range" in m for m in notifications)


def _stores():
    from napari_pathviz.store import cache_root

    folder = cache_root() / "attributions"
    return set(folder.iterdir()) if folder.exists() else set()


def test_cancel_keeps_finished_chunks_and_explain_resumes(demo_viewer, qtbot):
    import zarr

    viewer, widget, patches = demo_viewer
    rows = list(range(0, 240, 5))  # 48 patches: three stored chunks of 16
    patches.selected_data = set(rows)
    widget.n_samples.value = 200
    widget.n_background.value = 8
    before = _stores()
    widget.run_button.clicked.emit()
    # Past 16 of 48 patches: the first chunk is finished and stored, the second under way.
    qtbot.waitUntil(lambda: widget.progress.value >= 34, timeout=120_000)
    widget.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    assert "cancelled" in widget.status.value
    assert f"{LAYER_PREFIX}gradient" not in viewer.layers
    (store,) = _stores() - before
    done = zarr.open_group(str(store), mode="r")["done"][:]
    assert 1 <= done.sum() < 3  # the finished chunks were kept, not the whole job
    kept = zarr.open_group(str(store), mode="r")["maps"][:16]
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    assert widget.status.value.startswith("gradient: 48 patches"), widget.status.value
    assert _stores() - before == {store}  # the same job: resumed in the same store
    assert zarr.open_group(str(store), mode="r")["done"][:].all()
    np.testing.assert_array_equal(zarr.open_group(str(store), mode="r")["maps"][:16], kept)
    assert np.isfinite(patches.features["gradient_probability"].to_numpy()[rows]).all()


def test_each_class_gives_a_layer_per_class_and_labels(demo_viewer, qtbot):
    viewer, widget, patches = demo_viewer
    patches.selected_data = {3, 200}
    widget.method.value = "gradcampp"
    widget.target.value = "each"
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    names = [layer.name for layer in viewer.layers]
    for name in ("background", "dab_negative", "dab_positive"):  # the model card's classes
        assert f"{LAYER_PREFIX}gradcampp {name}" in names
    labels = viewer.layers[f"{LAYER_PREFIX}gradcampp labels"]
    texts = list(labels.text.values)
    predicted = patches.features["gradcampp_target"].to_numpy()[[3, 200]]
    probability = patches.features["gradcampp_probability"].to_numpy()[[3, 200]]
    assert texts == [f"{t}: p={p:.2f}" for t, p in zip(predicted, probability, strict=True)]
    assert set(predicted) <= {"background", "dab_negative", "dab_positive"}
    # The label sits on its patch.
    f = patches.features
    y, x, p = (float(f[c].iat[3]) for c in ("y", "x", "patch_size"))
    assert y <= labels.data[0][0] < y + p and x <= labels.data[0][1] < x + p
    # Changing the opacity changes the heatmaps, not the labels.
    widget.opacity.value = 0.3
    assert viewer.layers[f"{LAYER_PREFIX}gradcampp dab_negative"].opacity == pytest.approx(0.3)
    assert labels.opacity == pytest.approx(1.0)


def test_kept_selection_and_file_backgrounds(demo_viewer, qtbot, tmp_path, notifications):
    _viewer, widget, patches = demo_viewer
    widget.n_samples.value = 16
    patches.selected_data = {100, 150, 200}
    widget.keep_background.clicked.emit()
    assert widget.background_from.value == "kept selection"
    patches.selected_data = {7}
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    assert widget.status.value.startswith("gradient: 1 patches"), widget.status.value
    np.save(tmp_path / "small.npy", np.zeros((4, 32, 32, 3), np.uint8))
    widget.background_from.value = "file"
    widget.background_file.value = str(tmp_path / "small.npy")
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    assert any("background: patches of (32, 32) px" in m for m in notifications), notifications


def test_open_a_store_written_headless(demo_viewer, tmp_path):
    from napari_pathviz._demo_model import load_demo_model, to_model_input
    from napari_pathviz.attribution.stored import explain
    from napari_pathviz.inference import read_patch_batch

    viewer, widget, patches = demo_viewer
    slide = viewer.layers[0].metadata["pathviz_slide"]
    keys = patches.features.iloc[[5, 240]]
    x = to_model_input(read_patch_batch(slide, keys))
    explain(load_demo_model(), x, "gradcam", store=tmp_path / "cam.zarr", keys=keys)
    widget.store_path.value = str(tmp_path / "cam.zarr")
    widget.open_store_button.clicked.emit()
    heat = viewer.layers[f"{LAYER_PREFIX}gradcam"]
    x0, y0, p = (int(keys[c].iat[1]) for c in ("x", "y", "patch_size"))
    window = np.asarray(heat.data[0][y0 - 1 : y0 + p + 1, x0 - 1 : x0 + p + 1])
    assert np.isfinite(window[1:-1, 1:-1]).all() and np.isnan(window[:, 0]).all()


def test_demo_viewer_opens_with_maps_on_the_top_patches(make_napari_viewer, qtbot):
    from napari_pathviz._demo import load_demo
    from napari_pathviz._demo_viewer import explain_top_patches, populate_demo_viewer

    viewer = make_napari_viewer()
    slide, table = load_demo()
    widgets = populate_demo_viewer(viewer, slide, table)
    widget = explain_top_patches(widgets["Attributions"])
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    heat = viewer.layers[f"{LAYER_PREFIX}gradient"]
    from napari_pathviz.attribution.gallery import distinct_rows

    ranked = np.argsort(-table.df["prob_dab_positive"].to_numpy(), kind="stable")
    expected = distinct_rows(table.df, ranked, 8)  # the 8 most positive places, not neighbours
    np.testing.assert_array_equal(heat.metadata[META_ATTRIBUTION]["rows"], expected)
    assert f"{LAYER_PREFIX}gradient labels" in viewer.layers
    assert viewer.layers.selection.active.name == viewer.layers[1].name  # still the patches
