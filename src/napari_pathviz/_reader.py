"""npe2 reader: whole-slide images (zarr, OME-Zarr, SVS, TIFF, NDPI), patch tables (ours,
PathFlowAI's, CLAM/TRIDENT/WSInfer .h5, WSInfer CSV) and GeoJSON (QuPath annotations become a
shapes layer; a file of tiles only, such as WSInfer's, a patches layer).

Bad files give one notification line instead of a traceback dialog: the reader reports the
error itself and hands napari the "empty file" sentinel.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ._layers import patches_layer_data, slide_layer_data
from .errors import PathvizError
from .io.clam_h5 import is_h5_path
from .io.geojson import is_geojson_path
from .io.tables import SQLITE_SUFFIXES, is_table_path, sqlite_patch_sizes
from .io.tiff_io import is_tiff_path
from .io.zarr_io import is_zarr_path
from .patches import load_patches
from .slide import open_slide

_NOTHING = [(None,)]  # napari's sentinel for "read, but no layers"


def get_reader(path: str | list[str]) -> Callable | None:
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    path = str(path)
    if is_zarr_path(path) or is_tiff_path(path):
        return read_slide
    if is_h5_path(path):
        return read_patch_table
    if is_geojson_path(path):
        return read_geojson_layers
    if is_table_path(path) and _has_patch_columns(path):
        return read_patch_table
    return None


def _has_patch_columns(path: str) -> bool:
    """Whether a CSV/Parquet file has x and y columns: other tables are left to other readers
    (napari's own reads point CSVs). Databases are always ours: PathFlowAI's format."""
    lower = path.lower()
    if lower.endswith(SQLITE_SUFFIXES) or not os.path.isfile(path):
        return True  # let read_patch_table report what is wrong with it
    try:
        if lower.endswith((".parquet", ".pq")):
            import pyarrow.parquet as pq

            columns = pq.read_schema(path).names
        else:
            import pandas as pd

            columns = pd.read_csv(path, sep="\t" if lower.endswith(".tsv") else ",", nrows=0)
            columns = list(columns.columns)
    except Exception:
        return True  # unreadable: read_patch_table reports it in one line
    return {"x", "y"} <= {str(c) for c in columns}


def _notify(err: PathvizError) -> list:
    from napari.utils.notifications import show_error

    from ._widgets._notify import gui_wording

    show_error(gui_wording(str(err)))  # in the GUI's words: no CLI flags
    return _NOTHING


def read_slide(path: str | list[str]) -> list:
    path = path[0] if isinstance(path, list) else path
    try:
        return [slide_layer_data(open_slide(path))]
    except PathvizError as err:
        return _notify(err)


def read_geojson_layers(path: str | list[str]) -> list:
    """QuPath annotations as a shapes layer (class names as its features); a file holding
    only tiles (WSInfer's output, QuPath tiles) as a patches layer."""
    from ._qupath_layers import annotation_shapes_data
    from .io.geojson import read_geojson

    path = str(path[0] if isinstance(path, list) else path)
    try:
        features = read_geojson(path)
        if features and all(f.object_type == "tile" for f in features):
            return [patches_layer_data(load_patches(path))]
        shapes = [f for f in features if f.object_type != "tile"]
        if not shapes:
            raise PathvizError(f"{path}: holds no polygons (annotations or tiles)")
        return [annotation_shapes_data(shapes, os.path.basename(path))]
    except PathvizError as err:
        return _notify(err)


def read_patch_table(path: str | list[str]) -> list:
    """One points layer per table; a PathFlowAI database gives one layer per patch size."""
    path = str(path[0] if isinstance(path, list) else path)
    try:
        if path.lower().endswith(SQLITE_SUFFIXES):
            sizes = [s for s in sqlite_patch_sizes(path) if s.isdigit()]
            if not sizes:
                raise PathvizError(
                    f"{path}: database holds no patch-size tables "
                    '(tables named by their patch size, e.g. "224")'
                )
            name = os.path.basename(path)
            return [
                patches_layer_data(load_patches(path, patch_size=int(s)), name=f"{name} [{s}]")
                for s in sizes
            ]
        return [patches_layer_data(load_patches(path))]
    except PathvizError as err:
        return _notify(err)
