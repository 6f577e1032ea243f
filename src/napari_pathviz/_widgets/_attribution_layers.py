"""How attribution results appear on the slide: one lazy red/blue layer per method (and per
class when every class was explained), all on one colour scale per method shown by one titled
colour key per method (see _colour_keys: stacked, shown while the method's maps are), a label
in each explained patch (white on a dark badge, readable over the yellow selection outline and
any map) that shows only when the patch is wide enough on screen for the whole label, and the
explained class and its probability as columns of the patches layer (so hovering a patch shows
them). While maps are shown, the patches layers keep their outlines but lose their fill, which
would tint the maps."""

from __future__ import annotations

import weakref

import numpy as np
import pandas as pd

from .._layers import META_COLOR_BY, META_SLIDE, set_patch_fill
from ..attribution.gallery import shared_limit
from ..attribution.layer import attribution_pyramid, smooth_maps
from ..attribution.result import AttributionResult
from ..classes import class_label, class_labels
from ._colour_keys import show_key
from ._viewer_state import real_viewer

LAYER_PREFIX = "attributions: "
META_ATTRIBUTION = "pathviz_attribution"
METHOD_TITLES = {
    "gradient": "Expected gradients",
    "deep": "DeepLIFT",
    "gradcam": "Grad-CAM",
    "gradcampp": "Grad-CAM++",
    "rollout": "Attention rollout",
    "chefer": "Chefer relevance",
}
# Labels: white text on a dark badge, so they read over the yellow selection outline, viridis'
# yellow and the red/blue maps alike. A label shows only while its badge fits LABEL_SPAN of its
# patch's width on screen: wider, it ran over the neighbouring patches' labels.
LABEL_FONT_SIZE = 9.0  # pt, as napari's text size
LABEL_COLOUR = "white"
LABEL_BADGE = (0.0, 0.0, 0.0, 0.85)  # RGBA of the badge behind the text
LABEL_SPAN = 0.7  # of the patch's width, at most
PX_PER_PT = 96 / 72  # vispy draws text sizes in points at 96 dpi
GLYPH_EM = 0.75  # a glyph's mean advance in font sizes, generous: vispy draws ~0.7
LABEL_PAD_PX = 12.0
DEFAULT_SMOOTHING = 1.5  # px: spreads expected gradients' 2-px dot lattice into structure
_WATCHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # viewers with our callbacks


def diverging_colormap():
    """Blue (negative), transparent at zero, red (positive)."""
    from napari.utils import Colormap

    return Colormap(
        colors=[[0.0, 0.35, 0.9, 1.0], [1.0, 1.0, 1.0, 0.0], [0.9, 0.05, 0.1, 1.0]],
        name="pathviz_red_blue",
        interpolation="linear",
    )


class _Rows:
    """Rows of a (possibly on-disk) maps array, indexable like an array of those rows only, so
    the lazy pyramid reads a map when a tile needs it."""

    def __init__(self, maps, rows: np.ndarray, scale: np.ndarray | None = None):
        self.maps, self.rows, self.scale = maps, rows, scale

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> np.ndarray:
        m = np.asarray(self.maps[int(self.rows[i])], np.float32)
        return m if self.scale is None else m / self.scale[i]


def show_attributions(
    viewer,
    result: AttributionResult,
    keys: pd.DataFrame,
    slide_layer,
    *,
    opacity: float,
    per_patch_scale: bool,
    patch_rows: np.ndarray | None = None,
    smoothing: float = 0.0,
) -> list:
    """Adds (or replaces) the layers of ``result``; ``keys`` has x, y and patch_size of each
    explained patch; ``patch_rows`` are those patches' rows in the patches layer (for metadata);
    ``smoothing`` is the Gaussian sigma (map px) applied to each map on its own.
    Returns the heatmap layers. The active layer stays what it was (usually the patches, where
    the user selects the next ones)."""
    active = viewer.layers.selection.active
    _watch(viewer)
    patch_of_row = result.patch_of_rows()
    targets = np.asarray(result.targets)
    each_class = len(patch_of_row) > len(np.unique(patch_of_row))
    names = result.metadata.get("class_names")  # the model's, recorded by the widget's job
    groups = (
        [(f" {class_label(names, k)}", np.flatnonzero(targets == k)) for k in np.unique(targets)]
        if each_class
        else [("", np.arange(len(patch_of_row)))]
    )
    maps = smooth_maps(result.maps, smoothing) if smoothing > 0 else result.maps
    limit = 1.0 if per_patch_scale else shared_limit(np.asarray(maps))
    level_shapes = [lv.shape[:2] for lv in slide_layer.metadata[META_SLIDE].levels]
    layers = []
    for suffix, rows in groups:
        scale = (
            np.array([shared_limit(np.asarray(maps[int(r)])[None]) for r in rows])
            if per_patch_scale
            else None
        )
        patches = patch_of_row[rows]
        levels = attribution_pyramid(
            _Rows(maps, rows, scale),
            keys["x"].to_numpy()[patches],
            keys["y"].to_numpy()[patches],
            keys["patch_size"].to_numpy()[patches],
            level_shapes,
        )
        name = f"{LAYER_PREFIX}{result.method}{suffix}"
        if name in viewer.layers:
            viewer.layers.remove(name)
        heat = viewer.add_image(
            levels,
            multiscale=True,
            name=name,
            colormap=diverging_colormap(),
            contrast_limits=(-limit, limit),
            opacity=opacity,
            scale=tuple(slide_layer.scale[:2]),
            blending="translucent",
        )
        heat.metadata[META_ATTRIBUTION] = {
            "method": result.method,
            "rows": None if patch_rows is None else np.asarray(patch_rows)[patches],
            "targets": targets[rows],
            "completeness_error": (
                None
                if result.completeness_error is None
                else np.asarray(result.completeness_error)[rows]
            ),
        }
        layers.append(heat)
    title = map_title(result, np.asarray(maps), per_patch_scale)
    key = show_key(
        viewer,
        f"attributions: {result.method}",
        title,
        diverging_colormap(),
        (-limit, limit),
        layers,
        scale=tuple(slide_layer.scale[:2]),
    )
    key.metadata[META_ATTRIBUTION] = {"key_of": result.method}
    _show_labels(viewer, result, keys, slide_layer)
    for layer in viewer.layers:
        if META_COLOR_BY in layer.metadata:
            set_patch_fill(layer, False)
    if active is not None and active in viewer.layers:
        viewer.layers.selection.active = active
    return layers


def explained_class_and_probability(result: AttributionResult) -> tuple[np.ndarray, np.ndarray]:
    """Per explained patch: the class shown in its label (the explained one, or the predicted
    one when every class was explained) and the model's probability for it."""
    patch_of_row = result.patch_of_rows()
    first = np.unique(patch_of_row, return_index=True)[1]
    probabilities = np.asarray(result.probabilities)[first]
    if len(first) < len(patch_of_row):  # every class: label the predicted one
        targets = probabilities.argmax(axis=1)
    else:
        targets = np.asarray(result.targets)[first]
    if probabilities.shape[1] == 1:
        return targets, probabilities[:, 0]
    return targets, probabilities[np.arange(len(first)), targets]


def map_title(result: AttributionResult, maps: np.ndarray, per_patch_scale: bool) -> str:
    """The colorbar title of a method's maps, e.g. "Expected gradients (dab_positive), signed"."""
    method = METHOD_TITLES.get(result.method, result.method)
    targets = np.unique(np.asarray(result.targets))
    names = result.metadata.get("class_names")
    if len(result.patch_of_rows()) > len(np.unique(result.patch_of_rows())):
        explained = "each class"
    elif len(targets) == 1:
        explained = class_label(names, targets[0])
    else:
        explained = "predicted class"
    finite = maps[np.isfinite(maps)]
    sign = "signed" if finite.size and finite.min() < 0 else "non-negative"
    return f"{method} ({explained}), {sign}" + (", per-patch scale" if per_patch_scale else "")


def _show_labels(viewer, result: AttributionResult, keys: pd.DataFrame, slide_layer) -> None:
    """One points layer in the explained patches whose text gives the explained class and its
    probability: white on a dark badge (a bar marker held at the label's width on screen),
    centred a quarter down the patch, clear of the patch and selection outlines, and shown only
    while the patch is wide enough on screen for the whole label."""
    targets, probability = explained_class_and_probability(result)
    size = keys["patch_size"].to_numpy(float)
    top_left = np.column_stack([keys["y"].to_numpy(float), keys["x"].to_numpy(float)])
    name = f"{LAYER_PREFIX}{result.method} labels"
    if name in viewer.layers:
        viewer.layers.remove(name)
    features = pd.DataFrame(
        {
            "target": class_labels(result.metadata.get("class_names"), targets),
            "probability": probability,
        }
    )
    template = "{target}: p={probability:.2f}"
    badge = badge_px([template.format(**row) for row in features.to_dict("records")])
    labels = viewer.add_points(
        top_left + size[:, None] * np.array([0.25, 0.5]),
        name=name,
        features=features,
        text={
            "string": template,
            "size": LABEL_FONT_SIZE,
            "color": LABEL_COLOUR,
            "anchor": "center",
        },
        symbol="hbar",  # a bar three times as wide as high: the badge
        size=size * LABEL_SPAN,
        canvas_size_limits=(0, badge),  # zoomed in, the badge stays the label's width
        face_color=list(LABEL_BADGE),
        border_width=0,
        scale=tuple(slide_layer.scale[:2]),
    )
    patch_world = float(np.min(size)) * float(abs(slide_layer.scale[-1]))
    labels.metadata[META_ATTRIBUTION] = {
        "labels_of": result.method,
        "patch_world": patch_world,
        "min_px": badge / LABEL_SPAN,
    }
    _toggle_labels(viewer)


def badge_px(texts: list[str]) -> float:
    """Screen width of the badge behind the longest of ``texts``."""
    longest = max((len(t) for t in texts), default=0)
    return longest * GLYPH_EM * LABEL_FONT_SIZE * PX_PER_PT + LABEL_PAD_PX


def patch_screen_px(viewer, patch_world: float) -> float:
    """Screen pixels a patch of ``patch_world`` world units covers at the current zoom."""
    return patch_world * float(_camera(viewer).zoom)


def _camera(viewer):
    return viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera


def labels_shown(layer) -> bool:
    """Whether a labels layer's labels (text and badges) are drawn at the current zoom."""
    return bool(layer.text.visible and layer.shown.all())


def _toggle_labels(viewer, _event=None) -> None:
    for layer in viewer.layers:
        meta = layer.metadata.get(META_ATTRIBUTION, {})
        if "labels_of" in meta:
            px = patch_screen_px(viewer, meta.get("patch_world", 0.0))
            wanted = px >= meta.get("min_px", 0.0)
            if labels_shown(layer) != wanted:
                layer.text.visible = wanted
                layer.shown = wanted


def _watch(viewer) -> None:
    """Once per viewer: labels follow the zoom, the patches' fill comes back with the last map,
    and hovering shows the patches' features (class, probability) in a tooltip."""
    viewer = real_viewer(viewer)  # once per viewer, whatever proxy of it a widget holds
    if viewer in _WATCHED:
        return
    _WATCHED[viewer] = True
    _camera(viewer).events.zoom.connect(lambda event: _toggle_labels(viewer, event))
    viewer.layers.events.removed.connect(lambda event: _maps_removed(viewer, event))
    viewer.tooltip.visible = True


def _maps_removed(viewer, _event=None) -> None:
    """The patches' fill comes back with the last map of any method (its key goes with it:
    see _colour_keys)."""
    metas = [ly.metadata.get(META_ATTRIBUTION, {}) for ly in viewer.layers]
    shown = {m.get("method") for m in metas if "rows" in m}
    if shown:
        return
    for layer in viewer.layers:
        if META_COLOR_BY in layer.metadata:
            set_patch_fill(layer, True)


def set_opacity(viewer, value: float) -> None:
    for layer in viewer.layers:
        if "rows" in layer.metadata.get(META_ATTRIBUTION, {}):
            layer.opacity = value


def add_result_columns(features: pd.DataFrame, result: AttributionResult, rows) -> pd.DataFrame:
    """``{method}_target`` (the class name) and ``{method}_probability`` for the explained rows
    (empty elsewhere), so the other widgets can colour and select by them and hovering a patch
    shows them."""
    targets, probability = explained_class_and_probability(result)
    features = features.copy()
    names = np.full(len(features), None, dtype=object)
    names[rows] = class_labels(result.metadata.get("class_names"), targets)
    features[f"{result.method}_target"] = names
    full = np.full(len(features), np.nan)
    full[rows] = probability
    features[f"{result.method}_probability"] = full
    return features
