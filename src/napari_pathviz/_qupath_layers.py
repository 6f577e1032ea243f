"""QuPath objects as napari layer data, and the layer-level actions the GUI hooks to buttons:
export the selected patches of a patches layer as GeoJSON, and label a patches layer by the
annotations of a shapes layer.

No napari import here: layer data tuples are plain data, and the actions take any object with
napari's ``features``, ``selected_data`` and ``metadata``.

QuPath's coordinates put pixel (0, 0)'s top-left corner at 0; napari puts pixel (0, 0)'s centre
at 0. A QuPath vertex (x, y) is therefore napari's world (y - 0.5, x - 0.5), and patch squares
and annotations line up exactly on the slide.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from .errors import PathvizError
from .io.geojson import GeoFeature, class_color

META_QUPATH = "pathviz_qupath_features"  # the GeoFeatures a shapes layer was read from
FACE_ALPHA = 0.25


def annotation_shapes_data(features: list[GeoFeature], name: str) -> tuple[Any, dict, str]:
    """A shapes layer with one polygon per polygon part (holes drawn as outlines), the class
    of each as the feature ``class`` and each class in its QuPath colour."""
    classes = sorted({f.class_name for f in features})
    colors = {c: class_color(i) for i, c in enumerate(classes)}
    for f in features:
        if f.color is not None:
            colors[f.class_name] = tuple(f.color)
    data, rows, faces, edges = [], [], [], []
    for f in features:
        rgb = np.asarray(colors[f.class_name], dtype=float) / 255.0
        for ring, hole in _rings(f.geometry):
            data.append(np.asarray(ring)[:-1, ::-1] - 0.5)  # (x, y) corners -> (y, x) world
            rows.append(
                {
                    "class": f.class_name,
                    "object_type": f.object_type,
                    "feature": f.index,
                    "hole": hole,
                }
            )
            faces.append([*rgb, 0.0 if hole else FACE_ALPHA])
            edges.append([*rgb, 1.0])
    extent = float(np.ptp(np.concatenate(data), axis=0).max()) if data else 1.0
    kwargs = {
        "name": name,
        "shape_type": "polygon",
        "features": pd.DataFrame(rows, columns=["class", "object_type", "feature", "hole"]),
        "face_color": np.asarray(faces).reshape(-1, 4),
        "edge_color": np.asarray(edges).reshape(-1, 4),
        "edge_width": max(1.0, extent / 400.0),
        "metadata": {META_QUPATH: features},
    }
    return (data, kwargs, "shapes")


def _rings(geometry):
    parts = geometry.geoms if geometry.geom_type == "MultiPolygon" else [geometry]
    for part in parts:
        yield np.asarray(part.exterior.coords), False
        for interior in part.interiors:
            yield np.asarray(interior.coords), True


def export_selected_patches(
    layer: Any,
    path: str | os.PathLike,
    *,
    object_type: str = "annotation",
    class_name: str = "selection",
    column: str | None = None,
) -> int:
    """Writes the selected points of a patches layer (all of them when none is selected) as
    QuPath annotations or tiles; returns how many patches were written."""
    from .annotations import patch_features
    from .io.geojson import write_geojson

    df = _patch_frame(layer)
    mask = np.zeros(len(df), dtype=bool)
    selected = np.fromiter(layer.selected_data, dtype=int) if layer.selected_data else None
    if selected is None or not selected.size:
        mask[:] = True
    else:
        mask[selected] = True
    features = patch_features(
        df, mask, class_name=class_name, column=column, object_type=object_type
    )
    write_geojson(path, features)
    return int(mask.sum())


def label_patches_layer(points: Any, shapes: Any, *, min_coverage: float = 0.5) -> list[str]:
    """Adds ``qupath_<class>`` coverage columns and ``qupath_class`` to a patches layer's
    features, from the annotations a shapes layer was read from; returns the new columns."""
    from .annotations import CLASS_COLUMN, COLUMN_PREFIX, label_patches
    from .patches import PatchTable

    features = shapes.metadata.get(META_QUPATH)
    if not features:
        raise PathvizError(
            f"layer {shapes.name!r} was not read from a QuPath GeoJSON: open the .geojson "
            "in napari to get its annotations"
        )
    table = PatchTable(_patch_frame(points), points.metadata.get("source", points.name))
    labelled = label_patches(table, features, min_coverage=min_coverage)
    added = [c for c in labelled.columns if c.startswith(COLUMN_PREFIX) or c == CLASS_COLUMN]
    merged = points.features.copy()
    for column in added:
        merged[column] = labelled[column].to_numpy()
    points.features = merged
    return added


def _patch_frame(layer: Any) -> pd.DataFrame:
    df = layer.features
    missing = [c for c in ("x", "y", "patch_size") if c not in df.columns]
    if missing:
        raise PathvizError(
            f"layer {layer.name!r} is not a patches layer (its features lack {', '.join(missing)})"
        )
    df = df.reset_index(drop=True)
    if "ID" not in df.columns:
        df = df.assign(ID=str(layer.name))
    return df
