"""One workbench per viewer, opened the way napari opens it: every widget from the Plugins menu
(``add_plugin_dock_widget``, which hands each widget its own ``PublicOnlyProxy`` of the viewer),
data through File > Open Sample or the reader, lassos as mouse events on the scatter's canvas.
The widgets share one state per viewer: the patches layer in use, its selection (a lasso reaches
Explain and the QuPath export), the model in use and the embeddings the layer carries."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pandas as pd
import pytest

napari = pytest.importorskip("napari")

from napari_helpers import (  # noqa: E402
    PLUGIN,
    lasso,
    points_inside,
    raise_dock_of,
    rectangle_path,
)
from napari_helpers import open_widget as _open  # noqa: E402
from napari_pathviz._widgets._attribution_layers import (  # noqa: E402
    LAYER_PREFIX,
    META_ATTRIBUTION,
)

DEMO_WEIGHTS = str(resources.files("napari_pathviz") / "data" / "demo_model.pt")
DEMO_FACTORY = "napari_pathviz._demo_model:build_demo_model"


def _lasso_left_part(explorer, fraction: float) -> np.ndarray:
    """Lassos (real mouse events on the scatter's canvas) the scatter points left of a vertical
    line between two points, so none lies on it; returns the patches-layer rows they are,
    sorted, checked against the points inside the lasso computed apart from the widget."""
    raise_dock_of(explorer.scatter.native)  # in front of its tab group: its canvas' own size
    screen = explorer.scatter.screen_positions()
    xs = np.unique(screen[:, 0])  # sorted, ties once
    k = max(1, int(len(xs) * fraction))
    cut = float(xs[k - 1] + xs[k]) / 2
    top, bottom = screen[:, 1].min() - 4, screen[:, 1].max() + 4
    path = lasso(explorer.scatter, rectangle_path((xs[0] - 4, top), (cut, bottom)))
    # The mouse's whole pixels move the cut by less than half a pixel: the rows left of it.
    wanted = np.sort(explorer.rows[screen[:, 0] < path[1][0]])
    np.testing.assert_array_equal(
        np.sort(explorer.rows[points_inside(explorer.scatter, path)]), wanted
    )
    np.testing.assert_array_equal(np.sort(explorer.rows[explorer.scatter.selected]), wanted)
    return wanted


def _geojson_corners(path) -> set:
    """The top-left corners (x, y) of the patch squares (tiles) a QuPath GeoJSON holds."""
    features = json.loads(path.read_text())["features"]
    corners = set()
    for feature in features:
        ring = np.asarray(feature["geometry"]["coordinates"][0], float)
        corners.add((int(round(ring[:, 0].min())), int(round(ring[:, 1].min()))))
    return corners


def _corners(layer, rows) -> set:
    df = layer.features.iloc[rows]
    return set(zip(df["x"].astype(int), df["y"].astype(int), strict=True))


def test_napari_hands_each_widget_its_own_proxy_yet_one_state(make_napari_viewer):
    """The premise: what the widgets were given differs, the state they share does not."""
    from napari_pathviz._widgets._model_in_use import model_in_use
    from napari_pathviz._widgets._patches_in_use import patches_in_use

    viewer = make_napari_viewer()
    inference, attributions = _open(viewer, "Model inference"), _open(viewer, "Attributions")
    assert inference._viewer is not attributions._viewer  # two proxies of one viewer
    assert inference.in_use is attributions.in_use is patches_in_use(viewer)
    assert inference.form.shared is attributions.form.shared is model_in_use(viewer)


def test_a_lasso_reaches_the_qupath_export_and_explain(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "demo")
    _slide, patches = viewer.layers
    explorer = _open(viewer, "Embedding explorer")
    attributions = _open(viewer, "Attributions")
    qupath = _open(viewer, "QuPath annotations")
    # A shown explorer runs the UMAP of the sample's embeddings by itself.
    qtbot.waitUntil(
        lambda: len(explorer.scatter.coords) == len(patches.data) and explorer.run_button.enabled,
        timeout=300_000,
    )
    # Nothing selected yet: the export writes every patch, and says so.
    qupath.object_type.value = "tile"  # one square per patch
    qupath.out.value = tmp_path / "all.geojson"
    qupath.export_button.clicked.emit()
    assert qupath.status.value.endswith("(none selected: all patches of the layer)")
    assert len(_geojson_corners(tmp_path / "all.geojson")) == len(patches.data)

    wanted = _lasso_left_part(explorer, 0.45)
    assert 5 <= len(wanted) < len(patches.data)

    # At once, before napari's own selection is set: the export asks for the selection.
    qupath.out.value = tmp_path / "lassoed.geojson"
    qupath.export_button.clicked.emit()
    assert qupath.status.value.startswith(f"wrote {len(wanted)} patches")
    assert _geojson_corners(tmp_path / "lassoed.geojson") == _corners(patches, wanted)
    np.testing.assert_array_equal(np.sort(list(patches.selected_data)), wanted)

    # A new lasso; Explain (rows: selection) explains exactly it.
    wanted = _lasso_left_part(explorer, 0.2)
    assert attributions.which.value == "selection"
    attributions.form.prefill_demo()
    attributions.method.value = "gradcam"
    attributions.run_button.clicked.emit()
    qtbot.waitUntil(lambda: attributions.run_button.enabled, timeout=120_000)
    assert attributions.status.value.startswith(f"gradcam: {len(wanted)} patches")
    maps = viewer.layers[f"{LAYER_PREFIX}gradcam"]
    np.testing.assert_array_equal(maps.metadata[META_ATTRIBUTION]["rows"], wanted)
    explained = np.isfinite(patches.features["gradcam_probability"].to_numpy())
    np.testing.assert_array_equal(np.flatnonzero(explained), wanted)


def test_picking_a_layer_in_any_widget_moves_every_widget(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "demo")
    first = viewer.layers[-1]
    names = [
        "Slide & patches",
        "Embedding explorer",
        "Model inference",
        "Attributions",
        "QuPath annotations",
    ]
    widgets = {name: _open(viewer, name) for name in names}
    combos = {
        name: getattr(widget, "patches_layer_choice", None) or widget.patches
        for name, widget in widgets.items()
    }
    # A second table, opened through the reader: it does not take over.
    first.features.iloc[:10][["ID", "x", "y", "patch_size"]].to_csv(
        tmp_path / "ten.csv", index=False
    )
    (second,) = viewer.open(tmp_path / "ten.csv", plugin=PLUGIN)
    assert {combo.value for combo in combos.values()} == {first.name}
    for picked, layer in [(n, ly) for n in names for ly in (second, first)]:
        combos[picked].value = layer.name
        shown = {name: combo.value for name, combo in combos.items()}
        assert shown == dict.fromkeys(names, layer.name), f"picked in {picked}"
        for name, widget in widgets.items():
            assert widget.in_use.layer is layer, f"{name} after a pick in {picked}"
    # The explorer shows the layer in use: the ten patches have no coordinates yet.
    combos["QuPath annotations"].value = second.name
    assert widgets["Embedding explorer"].hint.visible

    # One colour column: picked in Slide & patches, the explorer shows it; picked in the
    # explorer, the patches on the slide take it.
    combos["Attributions"].value = first.name
    loader, explorer = widgets["Slide & patches"], widgets["Embedding explorer"]
    by_annotation = np.array(first.face_color)
    assert loader.color_by.value == explorer.color_by.value == "annotation"
    loader.color_by.value = "prob_dab_positive"
    assert explorer.color_by.value == "prob_dab_positive"
    assert not np.array_equal(first.face_color, by_annotation)
    explorer.color_by.value = "annotation"
    assert loader.color_by.value == first.metadata["pathviz_color_by"] == "annotation"
    np.testing.assert_array_equal(first.face_color, by_annotation)


def test_one_model_for_inference_and_attributions(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "demo")
    patches = viewer.layers[-1]
    inference = _open(viewer, "Model inference")
    attributions = _open(viewer, "Attributions")
    # Entered once, in Inference: Attributions shows it, with the card's class names.
    inference.model_path.value = DEMO_WEIGHTS
    assert str(attributions.form.model_path.value) == DEMO_WEIGHTS
    for form in (inference.form, attributions.form):
        assert form.class_names.native.placeholderText() == (
            "from the card: background, dab_negative, dab_positive"
        )
    attributions.form.mean.value = "0.8 0.72 0.7"
    assert inference.mean.value == "0.8 0.72 0.7"
    attributions.form.mean.value = ""
    # A widget opened later shows the model in use too.
    late = _open(viewer, "Attributions")
    assert str(late.form.model_path.value) == DEMO_WEIGHTS

    inference.run_button.clicked.emit()
    qtbot.waitUntil(lambda: inference.run_button.enabled, timeout=120_000)
    assert inference.status.value.startswith(f"predictions for {len(patches.data)} patches")
    attributions.which.value = "top N"
    attributions.top_n.value = 3
    attributions.top_column.value = "prob_dab_positive"
    attributions.method.value = "gradcam"
    attributions.run_button.clicked.emit()
    qtbot.waitUntil(lambda: attributions.run_button.enabled, timeout=120_000)
    assert attributions.status.value.startswith("gradcam: 3 patches")
    # Explained with the model Inference loaded: read from disk once, for both.
    assert inference.form.shared.loads == 1
    # Another model file in either widget is the model in use for both.
    attributions.form.model_path.value = None
    assert inference.model_path.value is None
    inference.run_button.clicked.emit()
    assert "Model: give a model file first" in inference.status.value


def test_a_factory_typed_in_the_gui_gets_the_classes_typed_there(
    make_napari_viewer, qtbot, tmp_path
):
    import shutil

    weights = tmp_path / "weights.pt"  # the demo weights without their card
    shutil.copy(DEMO_WEIGHTS, weights)
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "demo")
    # The demo's patches without the demo model's predictions, through the reader.
    keys = viewer.layers[-1].features[["ID", "x", "y", "patch_size"]]
    keys.to_csv(tmp_path / "keys.csv", index=False)
    (patches,) = viewer.open(tmp_path / "keys.csv", plugin=PLUGIN)
    inference = _open(viewer, "Model inference")
    attributions = _open(viewer, "Attributions")
    attributions.patches_layer_choice.value = patches.name
    inference.model_path.value = weights
    assert inference.form.class_names.native.placeholderText() == "blank: class 0, 1…"
    inference.factory.value = DEMO_FACTORY
    inference.mean.value, inference.std.value = "0.8 0.72 0.7", "0.15 0.18 0.18"
    attributions.form.class_names.value = "glass, brown-negative, brown-positive"
    assert inference.form.class_names.value == "glass, brown-negative, brown-positive"
    inference.run_button.clicked.emit()
    qtbot.waitUntil(lambda: inference.run_button.enabled, timeout=120_000)
    probs = [c for c in patches.features.columns if c.startswith("prob_")]
    assert {"prob_glass", "prob_brown-negative", "prob_brown-positive"} <= set(probs)
    assert not {"prob_0", "prob_1", "prob_2"} & set(probs)
    assert set(patches.features["y_pred"]) <= {"glass", "brown-negative", "brown-positive"}
    # A bad list is refused in one line naming the field; nothing runs.
    inference.form.class_names.value = "glass, , brown"
    inference.run_button.clicked.emit()
    assert inference.status.value.startswith("Classes: an empty class name")


def test_inference_embeddings_feed_the_explorer_without_a_file(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "demo")
    patches = viewer.layers[-1]
    explorer = _open(viewer, "Embedding explorer")
    inference = _open(viewer, "Model inference")
    explorer.embeddings_path.value = None  # no embeddings file: only what the GUI made
    explorer.run_button.clicked.emit()
    assert explorer.status.value.startswith("Embeddings: give an embeddings file first")
    inference.form.prefill_demo()
    inference.embeddings.value = True
    inference.run_button.clicked.emit()
    qtbot.waitUntil(lambda: inference.run_button.enabled, timeout=120_000)
    feats = [c for c in patches.features.columns if str(c).startswith("feat_")]
    assert len(feats) >= 8
    explorer.n_neighbors.value = 10
    explorer.seed.value = 0
    explorer.run_button.clicked.emit()
    qtbot.waitUntil(lambda: explorer.run_button.enabled, timeout=300_000)
    assert len(explorer.scatter.coords) == len(patches.data)
    coords = patches.features[["umap_0", "umap_1"]].to_numpy()
    assert np.isfinite(coords).all() and coords.std(axis=0).min() > 0
    # The UMAP is of those features: patches the model saw alike lie close together.
    features = patches.features[feats].to_numpy(float)
    nearest_in_features = np.argsort(
        ((features[:, None] - features[None]) ** 2).sum(-1) + np.eye(len(features)) * 1e12,
        axis=1,
    )[:, 0]
    distance = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    assert np.median(distance[np.arange(len(coords)), nearest_in_features]) < np.median(distance)


def test_a_lasso_at_100k_patches_reaches_the_layer_when_a_widget_asks(
    make_napari_viewer, qtbot, tmp_path
):
    n, side = 100_000, 400
    i = np.arange(n)
    table = pd.DataFrame({"ID": "s", "x": i % side * 32, "y": i // side * 32, "patch_size": 32})
    table.to_parquet(tmp_path / "patches.parquet")
    # UMAP coordinates as `pathviz umap` writes them: two clusters, rows 0-1999 on the left.
    rng = np.random.default_rng(0)
    coords = np.where(i[:, None] < 2000, 0.0, 10.0) + rng.normal(0, 0.5, (n, 2))
    table.assign(umap_0=coords[:, 0], umap_1=coords[:, 1]).to_csv(
        tmp_path / "umap_coords.csv", index=False
    )
    viewer = make_napari_viewer(show=True)
    (patches,) = viewer.open(tmp_path / "patches.parquet", plugin=PLUGIN)
    explorer = _open(viewer, "Embedding explorer")
    qupath = _open(viewer, "QuPath annotations")
    explorer.coords_path.value = tmp_path / "umap_coords.csv"
    explorer.load_coords_button.clicked.emit()
    assert len(explorer.scatter.coords) == n
    viewer.layers.selection.active = None  # nothing forces napari's selection early

    raise_dock_of(explorer.scatter.native)  # the QuPath tab was in front
    screen = explorer.scatter.screen_positions()
    small = explorer.rows < 2000
    lo, hi = screen[small].min(axis=0) - 6, screen[small].max(axis=0) + 6
    path = lasso(explorer.scatter, rectangle_path(lo, hi))
    np.testing.assert_array_equal(np.sort(points_inside(explorer.scatter, path)), np.arange(2000))
    assert not len(patches.selected_data)  # set lazily: no one asked yet
    qupath.object_type.value = "tile"
    qupath.out.value = tmp_path / "cluster.geojson"
    qupath.export_button.clicked.emit()
    assert qupath.status.value.startswith("wrote 2000 patches")
    np.testing.assert_array_equal(np.sort(list(patches.selected_data)), np.arange(2000))
    assert _geojson_corners(tmp_path / "cluster.geojson") == _corners(patches, np.arange(2000))


def test_the_loader_says_which_layer_is_in_use(make_napari_viewer, tmp_path):
    table = pd.DataFrame({"ID": "s", "x": [0, 64, 128], "y": 0, "patch_size": 64})
    table.to_csv(tmp_path / "three.csv", index=False)
    viewer = make_napari_viewer()
    loader = _open(viewer, "Slide & patches")
    loader.table_path.value = tmp_path / "three.csv"
    loader.load_table_button.clicked.emit()
    first = viewer.layers[-1]
    assert loader.in_use.layer is first
    assert "Patches in use" not in loader.status.value  # the first table is the one in use
    loader.load_table_button.clicked.emit()
    assert loader.status.value.endswith(f"Patches in use: {first.name} (change it above)")
