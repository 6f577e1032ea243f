"""WSInfer's outputs as patch tables: its per-slide CSV and its GeoJSON of tiles.

WSInfer (``wsinfer run``) writes ``model-outputs-csv/{slide}.csv`` with columns ``minx, miny,
width, height`` (a patch's level-0 top-left corner and its level-0 size) and one ``prob_<class>``
per class; ``model-outputs-geojson/{slide}.geojson`` holds the same patches as QuPath tiles
(``objectType`` "tile", a box polygon, the probabilities as ``measurements``). Both become our
patch key: x = minx, y = miny, patch_size = width, which must equal height (a patch is square).
The same tile reading serves QuPath tiles, ours included (their class becomes ``qupath_class``).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ..errors import PathvizError
from .clam_h5 import file_stem

WSINFER_COLUMNS = ("minx", "miny", "width", "height")
_KEYS = ("ID", "x", "y", "patch_size", "qupath_class")


def is_wsinfer_frame(df: pd.DataFrame) -> bool:
    columns = {str(c) for c in df.columns}
    return set(WSINFER_COLUMNS) <= columns and not {"x", "y"} <= columns


def wsinfer_to_patches(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """A WSInfer table with our key columns (x, y, patch_size) in place of its box columns;
    any other table is returned as it is."""
    if not is_wsinfer_frame(df):
        return df
    width = pd.to_numeric(df["width"], errors="coerce").to_numpy(dtype=float)
    height = pd.to_numeric(df["height"], errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~(width == height))  # NaN compares unequal: caught here too
    if bad.size:
        i = int(bad[0])
        raise PathvizError(
            f"{source}: row {i}: width {df['width'].iloc[i]} differs from height "
            f"{df['height'].iloc[i]}; patches must be square ({bad.size} such rows)"
        )
    out = df.rename(columns={"minx": "x", "miny": "y", "width": "patch_size"})
    out = out.drop(columns="height")
    if "ID" not in out.columns:  # WSInfer writes model-outputs-csv/{slide}.csv
        out.insert(0, "ID", file_stem(source))
    return out


def read_tiles_geojson(path: str | os.PathLike) -> pd.DataFrame:
    """The square tiles of a GeoJSON file (WSInfer's, or QuPath's) as a patch table: x, y,
    patch_size from each box, its measurements as columns, its class as ``qupath_class``."""
    import shapely

    from .geojson import UNCLASSIFIED, read_geojson

    path = str(path)
    features = read_geojson(path)
    if not features:
        raise PathvizError(f"{path}: holds no polygons to read as patches")
    rows = []
    for feature in features:
        geom = feature.geometry
        minx, miny, maxx, maxy = shapely.bounds(geom)
        width, height = maxx - minx, maxy - miny
        if geom.geom_type != "Polygon" or abs(geom.area - width * height) > 1e-6 * width * height:
            raise PathvizError(
                f"{path}: feature {feature.index} is not an axis-aligned box; only tiles "
                "(one square per patch) can be read as a patch table"
            )
        if abs(width - height) > 1e-9:
            raise PathvizError(
                f"{path}: feature {feature.index}: tile is {width:g} wide but {height:g} high; "
                "patches must be square"
            )
        row = {"x": minx, "y": miny, "patch_size": width}
        if feature.name is not None:
            row["ID"] = feature.name
        if feature.class_name != UNCLASSIFIED:
            row["qupath_class"] = feature.class_name
        # A measurement never replaces the key the box itself gives.
        row.update({k: v for k, v in feature.measurements.items() if k not in _KEYS})
        rows.append(row)
    frame = pd.DataFrame(rows)
    if "ID" not in frame.columns or frame["ID"].isna().any():
        frame["ID"] = file_stem(path)  # WSInfer's model-outputs-geojson/{slide}.geojson
    return frame
