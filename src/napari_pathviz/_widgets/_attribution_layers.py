"""How attribution results appear on the slide: one lazy red/blue layer per method (and per
class when every class was explained), a text label beside each explained patch, and the
explained class and its probability as columns of the patches layer."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._layers import META_SLIDE
from ..attribution.gallery import shared_limit
from ..attribution.layer import attribution_pyramid
from ..attribution.result import AttributionResult
from ..classes import class_label, class_labels

LAYER_PREFIX = "attributions: "
META_ATTRIBUTION = "pathviz_attribution"


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
) -> list:
    """Adds (or replaces) the layers of ``result``; ``keys`` has x, y and patch_size of each
    explained patch; ``patch_rows`` are those patches' rows in the patches layer (for metadata).
    Returns the heatmap layers. The active layer stays what it was (usually the patches, where
    the user selects the next ones)."""
    active = viewer.layers.selection.active
    patch_of_row = result.patch_of_rows()
    targets = np.asarray(result.targets)
    each_class = len(patch_of_row) > len(np.unique(patch_of_row))
    names = result.metadata.get("class_names")  # the model's, recorded by the widget's job
    groups = (
        [(f" {class_label(names, k)}", np.flatnonzero(targets == k)) for k in np.unique(targets)]
        if each_class
        else [("", np.arange(len(patch_of_row)))]
    )
    maps = result.maps
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
            "rows": None if patch_rows is None else np.asarray(patch_rows)[patches],
            "targets": targets[rows],
            "completeness_error": (
                None
                if result.completeness_error is None
                else np.asarray(result.completeness_error)[rows]
            ),
        }
        if hasattr(heat, "colorbar"):
            heat.colorbar.visible = True
        layers.append(heat)
    _show_labels(viewer, result, keys, slide_layer)
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


def _show_labels(viewer, result: AttributionResult, keys: pd.DataFrame, slide_layer) -> None:
    """One points layer of invisible points at the explained patches' top-left corners whose
    text gives the explained class and its probability."""
    targets, probability = explained_class_and_probability(result)
    size = keys["patch_size"].to_numpy(float)
    corners = np.column_stack([keys["y"].to_numpy(float), keys["x"].to_numpy(float)])
    name = f"{LAYER_PREFIX}{result.method} labels"
    if name in viewer.layers:
        viewer.layers.remove(name)
    labels = viewer.add_points(
        corners + size[:, None] * 0.1,
        name=name,
        features=pd.DataFrame(
            {
                "target": class_labels(result.metadata.get("class_names"), targets),
                "probability": probability,
            }
        ),
        text={
            "string": "{target}: p={probability:.2f}",
            "size": 9,
            "color": "yellow",
            "anchor": "upper_left",
        },
        size=1,
        face_color="transparent",
        border_width=0,
        scale=tuple(slide_layer.scale[:2]),
    )
    labels.metadata[META_ATTRIBUTION] = {"labels_of": result.method}


def set_opacity(viewer, value: float) -> None:
    for layer in viewer.layers:
        if (
            META_ATTRIBUTION in layer.metadata
            and "labels_of" not in layer.metadata[META_ATTRIBUTION]
        ):
            layer.opacity = value


def add_result_columns(features: pd.DataFrame, result: AttributionResult, rows) -> pd.DataFrame:
    """``{method}_target`` and ``{method}_probability`` for the explained rows (NaN elsewhere),
    so the other widgets can colour and select by them."""
    targets, probability = explained_class_and_probability(result)
    features = features.copy()
    for column, values in (
        (f"{result.method}_target", targets),
        (f"{result.method}_probability", probability),
    ):
        full = np.full(len(features), np.nan)
        full[rows] = values
        features[column] = full
    return features
