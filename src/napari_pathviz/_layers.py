"""napari layer data for slides and patch tables, as plain LayerDataTuples.

Imports no napari, so the reader, the sample data, the widgets and the tests share one recipe.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .patches import PatchTable
from .render import column_colors
from .slide import Slide

# Patches are filled translucent and outlined opaque, so the tissue stays visible underneath.
FACE_ALPHA = 0.35
BORDER_WIDTH = 0.06  # relative to the square's side
META_SLIDE = "pathviz_slide"
META_COLOR_BY = "pathviz_color_by"
META_FILL_HIDDEN = "pathviz_fill_hidden"  # set while attribution maps lie over the patches


def slide_scale(slide: Slide, use_mpp: bool) -> tuple[float, float]:
    """World units per level-0 pixel: microns when asked and known, else pixels."""
    if use_mpp and slide.mpp:
        return (slide.mpp, slide.mpp)
    return (1.0, 1.0)


def slide_layer_data(slide: Slide, use_mpp: bool = False) -> tuple[Any, dict, str]:
    """One multiscale RGB image layer; no pixel is read here. A chunk that cannot be read
    (corrupt, or missing from the file) is shown blank with one warning, so that one bad tile
    does not stop the whole slide from opening; analyses read the slide itself and refuse it."""
    levels = [_shown_despite_bad_chunks(level) for level in slide.levels]
    levels = levels if slide.rgb else [lv[..., 0] for lv in levels]
    kwargs: dict[str, Any] = {
        "name": slide.slide_id,
        "rgb": slide.rgb,
        "multiscale": len(levels) > 1,
        "scale": slide_scale(slide, use_mpp),
        "metadata": {META_SLIDE: slide, "mpp": slide.mpp, "path": slide.path},
    }
    if levels[0].dtype == np.uint8:
        # Given explicitly so napari never scans a dask pyramid to guess them.
        kwargs["contrast_limits"] = (0, 255)
    return (levels if len(levels) > 1 else levels[0], kwargs, "image")


def _shown_despite_bad_chunks(level):
    """``level`` (a dask array) read chunk by chunk, a chunk that fails read as zeros and
    reported once per level (a napari warning; a Python warning outside napari)."""
    import dask.array as da

    from .errors import PathvizError

    reported: list[str] = []

    def read(block_info=None):
        where = block_info[None]["array-location"]
        region = level[tuple(slice(start, stop) for start, stop in where)]
        try:
            return np.asarray(region.compute(scheduler="synchronous"))
        except PathvizError as err:
            if not reported:
                reported.append(str(err))
                _warn(f"{err}; shown blank (the slide's other chunks are shown)")
            return np.zeros(region.shape, level.dtype)

    return da.map_blocks(
        read, chunks=level.chunks, dtype=level.dtype, meta=np.empty((0,) * level.ndim, level.dtype)
    )


def _warn(message: str) -> None:
    try:
        from napari.utils.notifications import show_warning
    except ImportError:
        import warnings

        from .errors import PathvizWarning

        warnings.warn(message, PathvizWarning, stacklevel=2)
    else:
        show_warning(message)


def default_color_column(table: PatchTable) -> str:
    for column in ("annotation", "y_pred", "label", "tissue"):
        if column in table.df.columns:
            return column
    return "ID"


def patch_colors(table: PatchTable, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(face, border) RGBA arrays for colouring the patches by ``column``."""
    mapping = column_colors(table.df, column)
    border = mapping.rgba.copy()
    face = mapping.rgba.copy()
    face[:, 3] = FACE_ALPHA
    return face, border


def patches_layer_data(
    table: PatchTable,
    color_by: str | None = None,
    scale: tuple[float, float] = (1.0, 1.0),
    name: str | None = None,
) -> tuple[Any, dict, str]:
    """A points layer with one square per patch covering it exactly, every column a feature."""
    column = color_by or default_color_column(table)
    face, border = patch_colors(table, column)
    ids = table.df["ID"].unique()
    kwargs = {
        "name": name or (f"{ids[0]} patches" if len(ids) == 1 else "patches"),
        "symbol": "square",
        "size": table.patch_sizes.astype(float),
        "face_color": face,
        "border_color": border,
        "border_width": BORDER_WIDTH,
        "border_width_is_relative": True,
        "features": table.df.reset_index(drop=True),
        "scale": scale,
        "metadata": {META_COLOR_BY: column, "source": table.source},
    }
    return (table.centers_yx(), kwargs, "points")


def recolor_patches_layer(layer: Any, column: str) -> None:
    """Recolours an existing patches points layer by one of its feature columns."""
    table = PatchTable(layer.features, layer.metadata.get("source", layer.name))
    face, border = patch_colors(table, column)
    if layer.metadata.get(META_FILL_HIDDEN):
        face[:, 3] = 0.0
    layer.face_color = face
    layer.border_color = border
    layer.metadata[META_COLOR_BY] = column


def set_patch_fill(layer: Any, shown: bool) -> None:
    """Shows or hides the translucent fill of a patches layer, keeping the outlines: while
    attribution maps lie over the patches, the fill would tint them."""
    if bool(layer.metadata.get(META_FILL_HIDDEN)) == (not shown):
        return
    face = np.array(layer.face_color, np.float32, copy=True)
    if len(face):
        face[:, 3] = FACE_ALPHA if shown else 0.0
        layer.face_color = face
    layer.metadata[META_FILL_HIDDEN] = not shown
