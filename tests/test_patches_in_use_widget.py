"""One patches layer in use, shared by the four dock widgets of a viewer (opened as napari's
Plugins menu opens them, each with its own proxy of the viewer): a selection made in the
embedding scatter is what Explain acts on, whatever layers were added since (a tissue grid, a
umap_coords.csv opened with File > Open), and picking a layer in one widget picks it for all."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari_helpers import lasso, points_inside, raise_dock_of, rectangle_path  # noqa: E402
from napari_pathviz._widgets._attribution_layers import (  # noqa: E402
    LAYER_PREFIX,
    META_ATTRIBUTION,
)
from napari_pathviz._widgets.embedding import EMPTY_HINT  # noqa: E402

PLUGIN = "napari-pathviz"
NAMES = {
    "loader": "Slide & patches",
    "explorer": "Embedding explorer",
    "inference": "Model inference",
    "attributions": "Attributions",
}


def _widgets(viewer) -> dict:
    """The four widgets as napari's Plugins menu opens them."""
    return {
        key: viewer.window.add_plugin_dock_widget(PLUGIN, name)[1] for key, name in NAMES.items()
    }


def _shown(widgets) -> set:
    return {w.patches_layer_choice.value for w in widgets.values()}


def test_a_scatter_selection_is_what_explain_acts_on(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=True)  # a lasso is drawn on a shown canvas
    viewer.open_sample("napari-pathviz", "demo")
    slide, patches = viewer.layers
    widgets = _widgets(viewer)
    explorer, attributions = widgets["explorer"], widgets["attributions"]
    assert _shown(widgets) == {patches.name}
    assert explorer.hint.visible and explorer.hint.text == EMPTY_HINT  # no coordinates yet

    # Coordinates in the scatter: the patches' own positions, a layout with known geometry.
    xy = patches.features[["x", "y"]].to_numpy(np.float32)
    explorer.write_coords_to_layer(patches, patches.features, xy)
    assert not explorer.hint.visible and len(explorer.scatter.coords) == len(patches.data)
    # The scatter takes the layer's own colour column.
    assert explorer.color_by.value == patches.metadata["pathviz_color_by"] == "annotation"

    # New patches layers do not take over: a tissue grid, and umap_coords.csv opened as a file.
    loader = widgets["loader"]
    loader.grid_size.value = 256
    loader.grid_button.clicked.emit()
    qtbot.waitUntil(lambda: len(viewer.layers) == 3, timeout=60_000)
    grid = viewer.layers[-1]
    assert grid.name.endswith("tissue grid") and "Patches in use: " in loader.status.value
    explorer.export_coords(str(tmp_path / "umap_coords.csv"))
    viewer.open(tmp_path / "umap_coords.csv", plugin="napari-pathviz")
    assert len(viewer.layers) == 4
    opened = viewer.layers[-1]
    assert explorer.in_use.layer is patches and _shown(widgets) == {patches.name}
    viewer.layers.selection.active = grid  # the active layer does not decide either

    # A lasso (real mouse events on the scatter's canvas): the left third of the slide.
    raise_dock_of(explorer.scatter.native)  # in front of its tab group: its canvas' own size
    screen = explorer.scatter.screen_positions()
    xs = np.unique(screen[:, 0])
    cut = float(xs[len(xs) // 3 - 1] + xs[len(xs) // 3]) / 2  # between two columns of points
    lo, hi = screen.min(axis=0) - 4, screen.max(axis=0) + 4
    path = lasso(explorer.scatter, rectangle_path((lo[0], lo[1]), (cut, hi[1])))
    wanted = np.sort(explorer.rows[screen[:, 0] < path[1][0]])
    assert 20 <= len(wanted) < len(patches.data)
    np.testing.assert_array_equal(
        np.sort(explorer.rows[points_inside(explorer.scatter, path)]), wanted
    )
    np.testing.assert_array_equal(np.sort(explorer.rows[explorer.scatter.selected]), wanted)
    attributions.form.prefill_demo()
    attributions.method.value = "gradcam"
    attributions.run_button.clicked.emit()  # at once: the lasso's selection is not yet applied
    qtbot.waitUntil(lambda: attributions.run_button.enabled, timeout=120_000)
    assert attributions.status.value.startswith(f"gradcam: {len(wanted)} patches")
    maps = viewer.layers[f"{LAYER_PREFIX}gradcam"]
    np.testing.assert_array_equal(maps.metadata[META_ATTRIBUTION]["rows"], wanted)
    np.testing.assert_array_equal(np.sort(list(patches.selected_data)), wanted)
    assert np.isfinite(patches.features["gradcam_probability"].to_numpy()[wanted]).all()

    # One pick changes the layer for every widget; the explorer shows the hint for a layer
    # without coordinates, and the loader offers that layer's columns.
    widgets["inference"].patches_layer_choice.value = grid.name
    assert _shown(widgets) == {grid.name} and explorer.in_use.layer is grid
    assert explorer.hint.visible and len(explorer.scatter.coords) == 0
    assert "tissue" in loader.color_by.choices
    attributions.patches_layer_choice.value = patches.name
    assert _shown(widgets) == {patches.name}
    assert len(explorer.scatter.coords) == len(patches.data)
    # Removing the layer in use falls back to the latest patches layer left.
    viewer.layers.remove(patches)
    assert explorer.in_use.layer is opened and _shown(widgets) == {opened.name}


def test_open_sample_fills_the_explorer(make_napari_viewer, qtbot):
    """File > Open Sample: a shown explorer runs UMAP of the demo embeddings by itself and
    colours the scatter by the patches' colour column."""
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-pathviz", "demo")
    patches = viewer.layers[-1]
    _dock, explorer = viewer.window.add_plugin_dock_widget(PLUGIN, "Embedding explorer")
    assert explorer.embeddings_path.value.name == "embeddings.parquet"
    done = f"UMAP of {len(patches.data)} patches"
    qtbot.waitUntil(lambda: explorer.status.value == done, timeout=300_000)
    assert explorer.run_button.enabled
    assert len(explorer.scatter.coords) == len(patches.data) and not explorer.hint.visible
    assert explorer.color_by.value == "annotation"
    assert "annotation" in explorer.legend.value


def test_a_closed_widget_does_not_stop_the_others(make_napari_viewer, qtbot, tmp_path):
    import pandas as pd

    viewer = make_napari_viewer()
    widgets = _widgets(viewer)
    closed = widgets.pop("inference")
    closed.native.deleteLater()  # as when its dock is closed
    qtbot.waitUntil(lambda: not _alive(closed.native), timeout=5000)
    table = pd.DataFrame({"ID": ["s"] * 3, "x": [0, 8, 16], "y": [0, 0, 0], "patch_size": 8})
    table.to_csv(tmp_path / "patches.csv", index=False)
    (first,) = viewer.open(tmp_path / "patches.csv", plugin="napari-pathviz")
    assert _shown(widgets) == {first.name}  # the first patches layer is the one in use
    (second,) = viewer.open(tmp_path / "patches.csv", plugin="napari-pathviz")
    widgets["loader"].patches_layer_choice.value = second.name
    assert _shown(widgets) == {second.name}
    assert widgets["explorer"].in_use.layer is second


def _alive(native) -> bool:
    try:
        native.objectName()
    except RuntimeError:
        return False
    return True
