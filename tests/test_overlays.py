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
    LABEL_SPAN,
    LAYER_PREFIX,
    META_ATTRIBUTION,
    add_result_columns,
    labels_shown,
    patch_screen_px,
    show_attributions,
)
from napari_pathviz._widgets._colour_keys import keys_of  # noqa: E402
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


def test_labels_show_only_when_the_whole_label_fits_and_sit_off_the_outlines(slide_and_patches):
    viewer, slide_layer, patches = slide_and_patches
    rows = np.array([0, 8])
    keys = patches.features.iloc[rows]
    result = _result("gradcam", np.abs(_signed_maps(2)), [2, 2], [[0.1, 0.2, 0.7]] * 2)
    show_attributions(viewer, result, keys, slide_layer, opacity=0.7, per_patch_scale=False)
    labels = viewer.layers[f"{LAYER_PREFIX}gradcam labels"]
    assert list(labels.text.values) == ["dab_positive: p=0.70"] * 2
    # The label needs more screen pixels than its text's width: a patch 100 px wide on screen
    # (wider than the 64 px that once sufficed) is still narrower than its label.
    need = labels.metadata[META_ATTRIBUTION]["min_px"]
    assert need >= len("dab_positive: p=0.70") * 9 * 96 / 72 * 0.5 / LABEL_SPAN
    _camera(viewer).zoom = 100 / P
    assert not labels_shown(labels)
    _camera(viewer).zoom = 1.05 * need / P
    assert patch_screen_px(viewer, P) >= need and labels_shown(labels)
    _camera(viewer).zoom = 0.95 * need / P
    assert not labels_shown(labels) and not labels.text.visible and not labels.shown.any()
    # Each label is inside its patch, a quarter down, centred: clear of the outlines drawn on
    # the patch edges (the selection outline is 12 % of the side wide).
    f = patches.features
    for point, row in zip(labels.data, rows, strict=True):
        y, x = float(f["y"].iat[row]), float(f["x"].iat[row])
        np.testing.assert_allclose(point, (y + 0.25 * P, x + 0.5 * P))
        assert min(point[0] - y, point[1] - x, x + P - point[1]) >= 0.2 * P
    assert labels.text.anchor == "center"


def _luminance(rgb) -> float:
    """WCAG relative luminance of an sRGB colour on [0, 1]."""
    c = np.asarray(rgb, float)[:3]
    c = np.where(c <= 0.03928, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(c @ [0.2126, 0.7152, 0.0722])


def _contrast(a, b) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def test_labels_contrast_with_the_selection_outline_and_every_map_colour(slide_and_patches):
    from napari.utils.colormaps import ensure_colormap
    from napari.utils.colormaps.standardize_color import transform_color

    viewer, slide_layer, patches = slide_and_patches
    keys = patches.features.iloc[[5]]
    result = _result("gradient", _signed_maps(1), [2], [[0.1, 0.2, 0.7]])
    show_attributions(viewer, result, keys, slide_layer, opacity=0.7, per_patch_scale=False)
    labels = viewer.layers[f"{LAYER_PREFIX}gradient labels"]
    text = labels.text.color.constant if hasattr(labels.text.color, "constant") else None
    text = transform_color(text)[0]
    badge = np.asarray(labels.face_color[0])
    assert badge[3] >= 0.8 and _luminance(badge) < 0.05  # a dark, nearly opaque badge
    # What lies under a label: the yellow selection outline, viridis' yellow (the heatmap), the
    # maps' reds and blues, white glass. The badge's colour over each, against the text.
    viridis = ensure_colormap("viridis").map(np.array([1.0]))[0]
    under = [(1, 1, 0), viridis[:3], (0.9, 0.05, 0.1), (0.0, 0.35, 0.9), (1, 1, 1)]
    for colour in under:
        seen = badge[3] * badge[:3] + (1 - badge[3]) * np.asarray(colour, float)
        assert _contrast(text, seen) >= 4.5, (colour, _contrast(text, seen))


def test_a_label_drawn_on_screen_stays_inside_its_patch(slide_and_patches, qtbot):
    """On the canvas, at the first zoom that shows labels: the label's text pixels lie inside
    its patch (only the label is bright: the slide, patches and colour key are hidden)."""
    viewer, slide_layer, patches = slide_and_patches
    row = 8
    keys = patches.features.iloc[[row]]
    result = _result("gradcam", np.zeros((1, 16, 16)), [2], [[0.1, 0.2, 0.7]])
    show_attributions(viewer, result, keys, slide_layer, opacity=0.7, per_patch_scale=False)
    labels = viewer.layers[f"{LAYER_PREFIX}gradcam labels"]
    slide_layer.visible = patches.visible = False
    for key in keys_of(viewer):  # the colour key's title is white text too
        key.visible = False
    viewer.show()
    qtbot.wait(50)
    x0, y0 = float(keys["x"].iat[0]), float(keys["y"].iat[0])
    zoom = 1.02 * labels.metadata[META_ATTRIBUTION]["min_px"] / P
    camera = _camera(viewer)
    camera.center = (y0 + P / 2, x0 + P / 2)
    camera.zoom = zoom
    assert labels_shown(labels)
    shot = np.asarray(viewer.screenshot(canvas_only=True, flash=False))
    h, w = shot.shape[:2]
    bright = np.argwhere((shot[..., :3] > 200).all(axis=-1))
    assert len(bright) > 20, "the label is drawn"
    # The patch's rectangle on screen (the screenshot may be at the device pixel ratio).
    ratio = w / viewer.canvas.size[1] if viewer.canvas.size[1] else 1.0
    half = P / 2 * zoom * ratio
    top, left, bottom, right = h / 2 - half, w / 2 - half, h / 2 + half, w / 2 + half
    (r0, c0), (r1, c1) = bright.min(axis=0), bright.max(axis=0)
    assert left <= c0 and c1 <= right and top <= r0 and r1 <= bottom, (
        (r0, c0, r1, c1),
        (top, left, bottom, right),
    )


def _drawn_boxes(viewer) -> dict:
    """(left, top, right, bottom) on the canvas of each drawn colour key overlay, by layer
    name and overlay ("colorbar", "name"), as napari's vispy canvas placed them."""
    canvas = viewer.window._qt_viewer.canvas
    boxes = {}
    for layer, visuals in canvas._layer_overlay_to_visual.items():
        if layer not in viewer.layers or not layer.visible:
            continue
        for overlay, visual in visuals.items():
            keyed = overlay is layer.colorbar or overlay is layer.name_overlay
            if keyed and overlay.visible:
                x, y = visual.node.transform.translate[:2]
                kind = "colorbar" if overlay is layer.colorbar else "name"
                boxes[layer.name, kind] = (x, y, x + visual.x_size, y + visual.y_size)
    return boxes


def test_colour_keys_stack_whole_one_per_visible_method(slide_and_patches, qtbot):
    viewer, slide_layer, patches = slide_and_patches
    viewer.show()
    viewer.window._qt_window.resize(900, 700)  # a canvas narrower than three keys side by side
    keys = patches.features.iloc[[0, 7, 14]]
    probs = [[0.1, 0.2, 0.7]] * 3
    grad = _result("gradient", _signed_maps(3), [2, 2, 2], probs)
    deep = _result("deep", _signed_maps(3, 1), [2, 2, 2], probs)
    cam = _result("gradcam", np.abs(_signed_maps(3, 2)), [2, 2, 2], probs)
    shown = {}
    for result in (grad, deep, cam):
        shown[result.method] = show_attributions(
            viewer, result, keys, slide_layer, opacity=0.7, per_patch_scale=False
        )
    qtbot.wait(100)
    titles = {
        "Expected gradients (dab_positive), signed",
        "DeepLIFT (dab_positive), signed",
        "Grad-CAM (dab_positive), non-negative",
    }
    assert {ly.name for ly in keys_of(viewer)} == titles
    boxes = _drawn_boxes(viewer)
    assert {name for name, _ in boxes} == titles  # a bar and a title each, no other bar
    assert len(boxes) == 2 * len(titles)
    height, width = viewer.canvas.size
    for box in boxes.values():  # whole: inside the canvas
        assert box[0] >= 0 and box[2] <= width and box[1] >= 0 and box[3] <= height, box
    items = list(boxes.items())
    for i, (a, box_a) in enumerate(items):  # stacked: no two overlap
        for b, box_b in items[i + 1 :]:
            apart = (
                box_a[2] <= box_b[0]
                or box_b[2] <= box_a[0]
                or box_a[3] <= box_b[1]
                or box_b[3] <= box_a[1]
            )
            assert apart, (a, box_a, b, box_b)
    for title in titles:  # each title sits right above its own bar
        name, bar = boxes[title, "name"], boxes[title, "colorbar"]
        assert name[3] <= bar[1] and bar[1] - name[3] < 20
    # Hiding a method's maps hides its key; showing them brings it back.
    shown["deep"][0].visible = False
    qtbot.wait(50)
    assert {name for name, _ in _drawn_boxes(viewer)} == titles - {
        "DeepLIFT (dab_positive), signed"
    }
    shown["deep"][0].visible = True
    qtbot.wait(50)
    assert {name for name, _ in _drawn_boxes(viewer)} == titles


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


def test_prediction_heatmap_key_is_titled_with_its_column(make_napari_viewer, qtbot):
    """Opened as napari's Plugins menu does: the demo's heatmap has one colour key, titled with
    the column shown, which follows the column and stacks with the attribution keys."""
    from napari_pathviz._widgets._colour_keys import META_KEYED_BY

    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-pathviz", "demo")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-pathviz", "Model inference")
    widget.show_heatmap(widget.heatmap_column.value)
    qtbot.wait(50)
    heat = next(ly for ly in viewer.layers if "pathviz_heatmap_of" in ly.metadata)
    column = heat.metadata["pathviz_heatmap_of"]
    assert column == "prob_dab_positive"
    assert not heat.colorbar.visible  # its key's bar stands for it
    (key,) = keys_of(viewer)
    assert key.name == column and heat.metadata[META_KEYED_BY] == key.metadata["pathviz_key_of"]
    assert key.colorbar.visible and key.name_overlay.visible
    assert tuple(key.contrast_limits) == tuple(heat.contrast_limits)
    assert key.colormap.name == heat.colormap.name
    assert {name for name, _ in _drawn_boxes(viewer)} == {column}
    widget.heatmap_column.value = "prob_background"
    qtbot.wait(50)
    assert [ly.name for ly in keys_of(viewer)] == ["prob_background"]
    viewer.layers.remove(heat)
    qtbot.waitUntil(lambda: not keys_of(viewer))
