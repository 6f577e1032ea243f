"""The embedding explorer in a real napari viewer: UMAP run off the GUI thread, the vispy scatter,
lasso -> slide and slide -> scatter linking, click to jump, mosaic, exports, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

napari = pytest.importorskip("napari")

from napari_pathviz._layers import patches_layer_data  # noqa: E402
from napari_pathviz._widgets.embedding import (  # noqa: E402
    HIGHLIGHT_LAYER,
    MOSAIC_LAYER,
    EmbeddingWidget,  # noqa: E402
)
from napari_pathviz.patches import PatchTable  # noqa: E402

PLUGIN = "napari-pathviz"


@pytest.fixture
def two_clusters(make_napari_viewer):
    """A viewer with 60 patches and a widget whose scatter holds two far-apart clusters:
    rows 0-19 near (0, 0) and rows 20-59 near (10, 10), as if UMAP had run."""
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1300, 1000)
    df = pd.DataFrame(
        {
            "x": np.arange(60) % 10 * 64,
            "y": np.arange(60) // 10 * 64,
            "patch_size": 64,
            "label": ["a"] * 20 + ["b"] * 40,
        }
    )
    table = PatchTable.from_frame(df, slide_id="s1")
    from napari.layers import Layer

    layer = viewer.add_layer(Layer.create(*patches_layer_data(table)))
    widget = EmbeddingWidget(viewer)
    viewer.window.add_dock_widget(widget)
    rng = np.random.default_rng(0)
    coords = np.vstack([rng.normal(0, 0.3, (20, 2)), rng.normal(10, 0.3, (40, 2))])
    widget.write_coords_to_layer(layer, layer.features, coords.astype(np.float32))
    return viewer, widget, layer


def _box_around(points: np.ndarray, pad: float = 8.0) -> list[tuple[float, float]]:
    lo, hi = points.min(axis=0) - pad, points.max(axis=0) + pad
    return [(lo[0], lo[1]), (hi[0], lo[1]), (hi[0], hi[1]), (lo[0], hi[1])]


def _drag(canvas, path, modifiers=()):
    """A real left-button drag through vispy's event system, as a mouse would make it."""
    press = canvas.events.mouse_press(pos=path[0], button=1, modifiers=modifiers)
    for pos in path[1:]:
        canvas.events.mouse_move(
            pos=pos, button=1, buttons=[1], press_event=press, modifiers=modifiers
        )
    canvas.events.mouse_release(pos=path[-1], button=1, press_event=press, modifiers=modifiers)


def test_lasso_in_the_scatter_selects_the_patches_on_the_slide(two_clusters, qtbot):
    viewer, widget, layer = two_clusters
    scatter = widget.scatter
    assert len(scatter.coords) == 60
    screen = scatter.screen_positions()
    cluster_a = np.flatnonzero(widget.rows < 20)
    _drag(scatter.canvas, _box_around(screen[cluster_a]) + [_box_around(screen[cluster_a])[0]])
    # The outline layer is drawn at once; the layer's own selection follows on the next turn.
    highlight = viewer.layers[HIGHLIGHT_LAYER]
    np.testing.assert_array_equal(widget.highlighted_rows(), np.arange(20))
    qtbot.waitUntil(lambda: set(layer.selected_data) == set(range(20)), timeout=5000)
    np.testing.assert_allclose(
        np.unique(highlight.data, axis=0), np.unique(layer.data[:20], axis=0)
    )
    # The user's active layer stays active: the highlight is visible regardless.
    assert viewer.layers.selection.active is layer
    # Shift adds to the selection.
    cluster_b = np.flatnonzero(widget.rows >= 20)[:5]
    _drag(scatter.canvas, _box_around(screen[cluster_b], pad=0.5), modifiers=("Shift",))
    qtbot.waitUntil(lambda: len(layer.selected_data) > 20, timeout=5000)
    assert set(range(20)) <= set(layer.selected_data)


def test_rectangle_mode(two_clusters, qtbot):
    _viewer, widget, layer = two_clusters
    widget.mode.value = "rectangle"
    screen = widget.scatter.screen_positions()
    b = np.flatnonzero(widget.rows >= 20)
    box = _box_around(screen[b])
    _drag(widget.scatter.canvas, [box[0], box[1], box[2]])
    qtbot.waitUntil(lambda: set(layer.selected_data) == set(range(20, 60)), timeout=5000)


def test_selection_on_the_slide_highlights_the_scatter(two_clusters):
    viewer, widget, layer = two_clusters
    layer.selected_data = {3, 25, 59}
    assert sorted(widget.rows[widget.scatter.selected]) == [3, 25, 59]
    assert widget.highlighted_rows().tolist() == [3, 25, 59]
    assert viewer.layers[HIGHLIGHT_LAYER].visible
    layer.selected_data = set()
    assert len(widget.scatter.selected) == 0
    assert not viewer.layers[HIGHLIGHT_LAYER].visible


def test_click_on_a_point_centres_the_slide_on_its_patch(two_clusters):
    viewer, widget, layer = two_clusters
    widget.mode.value = "pan"
    index = int(np.flatnonzero(widget.rows == 42)[0])
    pos = tuple(widget.scatter.screen_positions()[index])
    _drag(widget.scatter.canvas, [pos])  # press and release in place: a click
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    np.testing.assert_allclose(camera.center[-2:], layer.data[42])
    assert "x=128 y=256" in widget.status.value


def test_colour_by_column_and_legend(two_clusters):
    _viewer, widget, _layer = two_clusters
    widget.color_by.value = "label"
    colours = widget.scatter.colors
    a, b = widget.rows < 20, widget.rows >= 20
    assert np.allclose(colours[a], colours[a][0]) and np.allclose(colours[b], colours[b][0])
    assert not np.allclose(colours[a][0], colours[b][0])
    assert "label" in widget.legend.value and "a" in widget.legend.value


def test_exports(two_clusters, tmp_path):
    _viewer, widget, layer = two_clusters
    screen = widget.scatter.screen_positions()
    widget.scatter.select_polygon(_box_around(screen[widget.rows < 20]))
    widget.export_path.value = str(tmp_path / "coords.csv")
    widget.export_coords_button.clicked.emit()
    coords = pd.read_csv(tmp_path / "coords.csv")
    assert list(coords.columns) == ["ID", "x", "y", "patch_size", "umap_0", "umap_1"]
    assert len(coords) == 60
    widget.export_path.value = str(tmp_path / "selection.parquet")
    widget.export_selection_button.clicked.emit()
    selection = pd.read_parquet(tmp_path / "selection.parquet")
    assert sorted(selection["x"].tolist()) == sorted(layer.features["x"][:20].tolist())
    widget.export_path.value = str(tmp_path / "scatter.png")
    widget.export_png_button.clicked.emit()
    assert (tmp_path / "scatter.png").stat().st_size > 1000


def test_run_umap_on_the_demo_and_mosaic(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """The whole flow: demo slide and patches, embeddings from the demo model, UMAP in a worker
    thread; the coordinates separate the annotations and land in the layer's features."""
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    from napari_pathviz._demo import demo_embeddings_path

    monkeypatch.setenv("PATHVIZ_CACHE_DIR", str(tmp_path / "cache"))
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "demo")
    layer = viewer.layers[-1]
    widget = EmbeddingWidget(viewer)
    widget.embeddings_path.value = str(demo_embeddings_path())
    widget.run_button.clicked.emit()
    assert not widget.run_button.enabled and widget.cancel_button.enabled
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=180_000)
    assert widget.status.value == f"UMAP of {len(layer.data)} patches", widget.status.value
    coords = layer.features[["umap_0", "umap_1"]].to_numpy()
    assert np.isfinite(coords).all() and len(widget.scatter.coords) == len(coords)
    labels = layer.features["annotation"].to_numpy()
    accuracy = cross_val_score(KNeighborsClassifier(10), coords, labels, cv=5).mean()
    assert accuracy > 0.8  # the demo model's embedding separates what the stain says

    widget.sort_col.value = "prob_dab_positive"
    widget.mosaic_button.clicked.emit()
    mosaic = viewer.layers[MOSAIC_LAYER]
    assert mosaic.rgb and mosaic.data.shape[2] == 3 and (mosaic.data < 250).any()
    assert mosaic.translate[1] > viewer.layers[0].data[0].shape[1]  # beside the slide


def test_cancel_stops_the_run(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from napari_pathviz._demo import demo_embeddings_path

    monkeypatch.setenv("PATHVIZ_CACHE_DIR", str(tmp_path / "cache"))
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "demo")
    widget = EmbeddingWidget(viewer)
    widget.embeddings_path.value = str(demo_embeddings_path())
    widget.run_button.clicked.emit()
    widget.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=180_000)
    assert widget.status.value == "cancelled"
    assert "umap_0" not in viewer.layers[-1].features.columns


def test_bad_inputs_notify(make_napari_viewer, qtbot, tmp_path, notifications):
    import torch

    viewer = make_napari_viewer()
    widget = EmbeddingWidget(viewer)
    widget.run_button.clicked.emit()
    assert any("give an embeddings file first" in m for m in notifications)

    pickle_path = tmp_path / "embeddings.pkl"
    torch.save({"embeddings": pd.DataFrame({"0": [1.0], "ID": ["s"]})}, pickle_path)
    widget.embeddings_path.value = str(pickle_path)
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=60_000)
    assert any(
        "embeddings.pkl: is a pickle" in m and "tick 'Trust this pickle'" in m
        for m in notifications
    )

    np.save(tmp_path / "flat.npy", np.zeros(10))
    widget.embeddings_path.value = str(tmp_path / "flat.npy")
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=60_000)
    assert any("flat.npy: embeddings must be a 2-D" in m for m in notifications)
    widget.centre_button.clicked.emit()
    assert any("select patches in the scatter first" in m for m in notifications)


@pytest.mark.parametrize("dims", [2, 3])
def test_fast_screen_positions_match_vispy(make_napari_viewer, dims):
    """The affine shortcut gives the same pixels as vispy's own transform chain, in 2-D (pan/
    zoom) and 3-D (orthographic turntable), also after the camera moves."""
    from napari_pathviz._widgets.scatter import ScatterCanvas

    make_napari_viewer()
    scatter = ScatterCanvas()
    rng = np.random.default_rng(1)
    coords = rng.normal(size=(500, dims)).astype(np.float32)
    scatter.set_data(coords, np.ones((500, 4), np.float32))

    def by_vispy():
        mapped = scatter.markers.get_transform("visual", "canvas").map(coords)
        return mapped[:, :2] / mapped[:, 3:4]

    np.testing.assert_allclose(scatter.screen_positions(), by_vispy(), atol=0.05)
    if dims == 2:
        scatter.view.camera.zoom(0.5)
    else:
        scatter.view.camera.azimuth = 120
    np.testing.assert_allclose(scatter.screen_positions(), by_vispy(), atol=0.05)
