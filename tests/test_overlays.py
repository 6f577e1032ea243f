"""Overlays in a real napari viewer: the lasso highlight layer (exactly the selected patches,
cleared by an empty lasso, napari's selection set when needed), attribution maps (one titled
colorbar per method, class names, shared scale), labels that follow the zoom and stay off the
outlines, the patches' fill hidden under the maps, and per-patch map smoothing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_pathviz.attribution.layer import smooth_maps
from napari_pathviz.errors import PathvizError

# -- smoothing (core, no viewer) -------------------------------------------------------------


def test_smoothing_keeps_each_maps_sum_and_sigma_zero_is_identity():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(4, 32, 32)).astype(np.float32)
    maps[1, :2, :2] = 50.0  # mass at a corner: the edge must not lose it
    np.testing.assert_array_equal(smooth_maps(maps, 0.0), maps)
    smooth = smooth_maps(maps, 1.5)
    scale = np.abs(maps).sum(axis=(1, 2))
    drift = np.abs(smooth.sum(axis=(1, 2)) - maps.sum(axis=(1, 2))) / scale
    assert drift.max() < 1e-5, drift
    # Maps are smoothed one by one: a map's neighbour in the stack does not bleed into it.
    one = smooth_maps(maps[1:2], 1.5)
    np.testing.assert_allclose(one[0], smooth[1], atol=1e-6)


def test_smoothing_turns_a_dot_lattice_into_an_even_field():
    lattice = np.zeros((1, 32, 32), np.float32)
    lattice[0, ::2, ::2] = 1.0  # expected gradients' 2-px dot pattern
    smooth = smooth_maps(lattice, 1.5)
    inner = smooth[0, 4:-4, 4:-4]
    assert inner.std() < 0.02 * lattice.std()
    np.testing.assert_allclose(inner.mean(), 0.25, atol=0.01)


def test_smoothing_rejects_a_negative_sigma():
    with pytest.raises(PathvizError, match="sigma"):
        smooth_maps(np.zeros((1, 4, 4)), -1.0)


# -- attribution layers in a viewer ----------------------------------------------------------
napari = pytest.importorskip("napari")

from napari_pathviz._layers import (  # noqa: E402
    FACE_ALPHA,
    META_FILL_HIDDEN,
    patches_layer_data,
    recolor_patches_layer,
    slide_layer_data,
)
from napari_pathviz._widgets._attribution_layers import (  # noqa: E402
    LABEL_MIN_PX,
    LAYER_PREFIX,
    META_ATTRIBUTION,
    add_result_columns,
    patch_screen_px,
    show_attributions,
)
from napari_pathviz.attribution.result import AttributionResult  # noqa: E402
from napari_pathviz.patches import PatchTable  # noqa: E402
from napari_pathviz.slide import open_slide  # noqa: E402

CLASSES = ["background", "dab_negative", "dab_positive"]
P = 100  # patch side, px


@pytest.fixture
def slide_and_patches(make_napari_viewer, pyramidal_tiff):
    """A viewer with a real pyramidal slide (1000 x 1400) and a 4 x 6 grid of 100-px patches."""
    from napari.layers import Layer

    viewer = make_napari_viewer()
    slide = open_slide(pyramidal_tiff)
    slide_layer = viewer.add_layer(Layer.create(*slide_layer_data(slide)))
    i = np.arange(24)
    df = pd.DataFrame({"x": i % 6 * P, "y": i // 6 * P, "patch_size": P, "label": "a"})
    table = PatchTable.from_frame(df, slide_id=slide.slide_id)
    patches = viewer.add_layer(Layer.create(*patches_layer_data(table)))
    return viewer, slide_layer, patches


def _result(method: str, maps: np.ndarray, targets, probabilities, patch_index=None):
    return AttributionResult(
        method=method,
        maps=maps.astype(np.float32),
        targets=np.asarray(targets),
        logits=np.log(np.asarray(probabilities)),
        probabilities=np.asarray(probabilities, np.float32),
        patch_index=patch_index,
        metadata={"class_names": CLASSES},
    )


def _camera(viewer):
    return viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera


def _signed_maps(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 16, 16)).astype(np.float32)


def test_one_titled_colorbar_per_method_and_class_names(slide_and_patches, qtbot):
    viewer, slide_layer, patches = slide_and_patches
    rows = np.array([0, 7, 14])
    keys = patches.features.iloc[rows]
    probs = np.array([[0.1, 0.2, 0.7]] * 3)
    # Every class explained for each patch: one layer per class, named by the class.
    each = _result(
        "gradient",
        _signed_maps(9),
        np.tile([0, 1, 2], 3),
        np.repeat(probs, 3, axis=0),
        patch_index=np.repeat(np.arange(3), 3),
    )
    heat = show_attributions(viewer, each, keys, slide_layer, opacity=0.7, per_patch_scale=False)
    names = [layer.name for layer in heat]
    assert names == [f"{LAYER_PREFIX}gradient {c}" for c in CLASSES]
    assert not any(layer.colorbar.visible for layer in heat)
    # The maps of one method share one scale, so they compare.
    assert len({tuple(layer.contrast_limits) for layer in heat}) == 1
    keys_layers = [ly for ly in viewer.layers if "key_of" in ly.metadata.get(META_ATTRIBUTION, {})]
    assert len(keys_layers) == 1
    key = keys_layers[0]
    assert key.name == "Expected gradients (each class), signed"
    assert key.colorbar.visible and key.name_overlay.visible
    assert tuple(key.contrast_limits) == tuple(heat[0].contrast_limits)
    # A second method adds its own key; rerunning a method replaces its key.
    cam = _result("gradcam", np.abs(_signed_maps(3, 1)), [2, 2, 2], probs)
    show_attributions(viewer, cam, keys, slide_layer, opacity=0.7, per_patch_scale=False)
    show_attributions(viewer, cam, keys, slide_layer, opacity=0.7, per_patch_scale=False)
    qtbot.wait(50)  # a rerun's new key survives the removal of the old maps
    titles = sorted(
        ly.name for ly in viewer.layers if "key_of" in ly.metadata.get(META_ATTRIBUTION, {})
    )
    assert titles == [
        "Expected gradients (each class), signed",
        "Grad-CAM (dab_positive), non-negative",
    ]
    visible_bars = [
        ly for ly in viewer.layers if getattr(ly, "colorbar", None) and ly.colorbar.visible
    ]
    assert len(visible_bars) == 2  # one per method, not one per map layer
    # The features table (what hovering a patch shows) names the class, not its index.
    features = add_result_columns(patches.features, cam, rows)
    assert features["gradcam_target"].iloc[rows].tolist() == ["dab_positive"] * 3
    np.testing.assert_allclose(features["gradcam_probability"].iloc[rows], 0.7, rtol=1e-6)
    assert pd.isna(features["gradcam_target"].iloc[1])


def test_labels_show_only_when_zoomed_in_and_sit_off_the_outlines(slide_and_patches):
    viewer, slide_layer, patches = slide_and_patches
    rows = np.array([0, 8])
    keys = patches.features.iloc[rows]
    result = _result("gradcam", np.abs(_signed_maps(2)), [2, 2], [[0.1, 0.2, 0.7]] * 2)
    show_attributions(viewer, result, keys, slide_layer, opacity=0.7, per_patch_scale=False)
    labels = viewer.layers[f"{LAYER_PREFIX}gradcam labels"]
    assert list(labels.text.values) == ["dab_positive: p=0.70"] * 2
    # Zoomed out, a 100-px patch covers fewer screen pixels than a label needs: hidden.
    _camera(viewer).zoom = 0.2 * LABEL_MIN_PX / P
    assert patch_screen_px(viewer, P) < LABEL_MIN_PX
    assert not labels.text.visible
    _camera(viewer).zoom = 2.0 * LABEL_MIN_PX / P
    assert labels.text.visible
    _camera(viewer).zoom = 0.5 * LABEL_MIN_PX / P
    assert not labels.text.visible
    # Each label is inside its patch, a quarter down, centred: clear of the outlines drawn on
    # the patch edges (the selection outline is 12 % of the side wide).
    f = patches.features
    for point, row in zip(labels.data, rows, strict=True):
        y, x = float(f["y"].iat[row]), float(f["x"].iat[row])
        np.testing.assert_allclose(point, (y + 0.25 * P, x + 0.5 * P))
        assert min(point[0] - y, point[1] - x, x + P - point[1]) >= 0.2 * P
    assert labels.text.anchor == "center"


def test_patch_fill_is_hidden_under_maps_and_comes_back(slide_and_patches, qtbot):
    viewer, slide_layer, patches = slide_and_patches
    assert np.allclose(patches.face_color[:, 3], FACE_ALPHA)
    border_before = patches.border_color.copy()
    keys = patches.features.iloc[[3]]
    result = _result("gradient", _signed_maps(1), [2], [[0.1, 0.2, 0.7]])
    show_attributions(viewer, result, keys, slide_layer, opacity=0.7, per_patch_scale=False)
    assert np.allclose(patches.face_color[:, 3], 0.0)
    np.testing.assert_array_equal(patches.border_color, border_before)  # outlines stay
    assert patches.metadata[META_FILL_HIDDEN]
    # Recolouring while maps are shown keeps the fill hidden.
    recolor_patches_layer(patches, "label")
    assert np.allclose(patches.face_color[:, 3], 0.0)
    # Removing the last map brings the fill back, and takes the method's colorbar key away.
    viewer.layers.remove(f"{LAYER_PREFIX}gradient")
    assert np.allclose(patches.face_color[:, 3], FACE_ALPHA)
    assert not patches.metadata[META_FILL_HIDDEN]
    qtbot.waitUntil(lambda: "Expected gradients (dab_positive), signed" not in viewer.layers)


def test_smoothing_option_changes_the_maps_on_the_slide(slide_and_patches):
    viewer, slide_layer, patches = slide_and_patches
    keys = patches.features.iloc[[0]]
    lattice = np.zeros((1, P, P), np.float32)
    lattice[0, ::2, ::2] = 1.0
    result = _result("gradient", lattice, [2], [[0.1, 0.2, 0.7]])
    raw = show_attributions(viewer, result, keys, slide_layer, opacity=1, per_patch_scale=False)
    raw_patch = np.asarray(raw[0].data[0][:P, :P])
    smooth = show_attributions(
        viewer, result, keys, slide_layer, opacity=1, per_patch_scale=False, smoothing=1.5
    )
    smooth_patch = np.asarray(smooth[0].data[0][:P, :P])
    np.testing.assert_array_equal(raw_patch, lattice[0])
    assert smooth_patch[10:-10, 10:-10].std() < 0.05 * raw_patch.std()
    np.testing.assert_allclose(smooth_patch.sum(), lattice.sum(), rtol=1e-4)
    # The colour scale follows the smoothed maps, so they are not drawn faint.
    assert smooth[0].contrast_limits[1] < 0.5 * raw[0].contrast_limits[1]


# -- lasso highlight ---------------------------------------------------------------------------


@pytest.fixture
def explorer(make_napari_viewer):
    """60 patches; the scatter holds two far-apart clusters (rows 0-19 and 20-59)."""
    from napari.layers import Layer

    from napari_pathviz._widgets.embedding import EmbeddingWidget

    viewer = make_napari_viewer(show=True)
    i = np.arange(60)
    df = pd.DataFrame({"x": i % 10 * 64, "y": i // 10 * 64, "patch_size": 64, "label": "a"})
    layer = viewer.add_layer(
        Layer.create(*patches_layer_data(PatchTable.from_frame(df, slide_id="s")))
    )
    widget = EmbeddingWidget(viewer)
    viewer.window.add_dock_widget(widget)
    rng = np.random.default_rng(0)
    coords = np.vstack([rng.normal(0, 0.3, (20, 2)), rng.normal(10, 0.3, (40, 2))])
    widget.write_coords_to_layer(layer, layer.features, coords.astype(np.float32))
    return viewer, widget, layer


def _lasso(widget, points: np.ndarray, pad: float = 8.0) -> None:
    lo, hi = points.min(axis=0) - pad, points.max(axis=0) + pad
    path = [(lo[0], lo[1]), (hi[0], lo[1]), (hi[0], hi[1]), (lo[0], hi[1]), (lo[0], lo[1])]
    canvas = widget.scatter.canvas
    press = canvas.events.mouse_press(pos=path[0], button=1, modifiers=())
    for pos in path[1:]:
        canvas.events.mouse_move(pos=pos, button=1, buttons=[1], press_event=press, modifiers=())
    canvas.events.mouse_release(pos=path[-1], button=1, press_event=press, modifiers=())


def test_lasso_highlight_shows_exactly_the_selection_and_clearing_clears(explorer, qtbot):
    from napari_pathviz._widgets.embedding import HIGHLIGHT_LAYER

    viewer, widget, layer = explorer
    other = viewer.add_points(np.zeros((1, 2)), name="other")  # the patches are not active
    screen = widget.scatter.screen_positions()
    big = np.flatnonzero(widget.rows >= 20)
    _lasso(widget, screen[big])
    highlight = viewer.layers[HIGHLIGHT_LAYER]
    np.testing.assert_array_equal(widget.highlighted_rows(), np.arange(20, 60))
    assert highlight.visible
    np.testing.assert_array_equal(
        np.unique(highlight.data, axis=0), np.unique(layer.data[20:], axis=0)
    )
    np.testing.assert_allclose(highlight.size, 64)
    assert np.allclose(highlight.border_color, (1, 1, 0, 1)) and np.allclose(
        highlight.face_color[:, 3], 0
    )
    # napari's own selection waits: the patches layer is not active and nothing asked for it.
    qtbot.wait(100)
    assert not len(layer.selected_data)
    assert viewer.layers.selection.active is other
    # A smaller lasso: exactly its rows, though the layer keeps its length.
    small = np.flatnonzero(widget.rows < 20)
    _lasso(widget, screen[small])
    np.testing.assert_array_equal(widget.highlighted_rows(), np.sort(widget.rows[small]))
    np.testing.assert_array_equal(
        np.unique(highlight.data, axis=0), np.unique(layer.data[widget.rows[small]], axis=0)
    )
    # Activating the patches layer puts the selection on it.
    viewer.layers.selection.active = layer
    assert set(layer.selected_data) == set(widget.rows[small].tolist())
    # A lasso around nothing clears the highlight and, once needed, the layer's selection.
    viewer.layers.selection.active = other
    _lasso(widget, np.array([[2.0, 2.0], [3.0, 3.0]]), pad=0.5)
    assert not widget.highlighted_rows().size and not highlight.visible
    widget.in_use.selected_rows()  # a widget asking for the selection flushes it
    assert not len(layer.selected_data)


def test_lasso_on_the_active_layer_sets_its_selection_after_the_frame(explorer, qtbot):
    _viewer, widget, layer = explorer
    assert _viewer.layers.selection.active is layer
    screen = widget.scatter.screen_positions()
    cluster = np.flatnonzero(widget.rows < 20)
    _lasso(widget, screen[cluster])
    assert widget.highlighted_rows().tolist() == list(range(20))
    qtbot.waitUntil(lambda: set(layer.selected_data) == set(range(20)), timeout=5000)


def test_scatter_redraws_after_a_release(explorer, qtbot):
    _viewer, widget, _layer = explorer
    canvas = widget.scatter.canvas
    drawn = []
    canvas.events.draw.connect(lambda _e: drawn.append(1))
    screen = widget.scatter.screen_positions()
    _lasso(widget, screen[:3], pad=0.5)
    assert canvas.held  # held back so the slide's frame goes first
    qtbot.waitUntil(lambda: not canvas.held and bool(drawn), timeout=5000)
