"""Finds missing or corrupt chunks before a long job: every stored chunk read once (`check`),
or, for a patch table, the patches that lie on a TIFF tile the file does not hold."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .errors import PathvizError
from .io.source import CheckedArray
from .io.tiff_io import decode_every_tile, missing_tiles, tile_table_faults
from .slide import Slide


def check_slide(
    slide: Slide,
    progress: Callable[[int, int], None] | None = None,
    *,
    decode_all: bool = False,
) -> int:
    """Raises PathvizError naming the first missing or unreadable chunk; returns chunks read.

    Missing zarr chunks are faults here even where reading allows them: a converted or
    copied slide should have every chunk. In a TIFF, tiles whose offset or byte count is zero
    (read as blank without an error) or that run past the end of the file are faults too.
    ``decode_all`` decodes every TIFF tile with tifffile and compares its decoded shape with
    the one its tags promise (zarr already checks each decoded chunk's size when reading).
    JPEG cannot detect every flipped bit: most still decode, to wrong pixels.
    """
    is_tiff = slide.source.format.startswith("tiff")
    if is_tiff:
        faults = tile_table_faults(slide.source)
        if faults:
            more = f" (and {len(faults) - 3} more)" if len(faults) > 3 else ""
            raise PathvizError(
                f"{slide.path}: {len(faults)} bad tiles: {'; '.join(faults[:3])}{more}"
            )
        if decode_all:
            return decode_every_tile(slide.source, progress)
    arrays = []
    for level, array in enumerate(slide.source.arrays[: slide.n_native]):
        inner = array.array if isinstance(array, CheckedArray) else array
        arrays.append(CheckedArray(inner, slide.path, level, check_missing=not is_tiff))
    grids = [[-(-s // c) for s, c in zip(a.shape, a.chunks, strict=True)] for a in arrays]
    total = int(sum(np.prod(g) for g in grids))
    done = 0
    for array, grid in zip(arrays, grids, strict=True):
        for index in np.ndindex(*grid):
            array[
                tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, array.chunks, strict=True))
            ]
            done += 1
            if progress is not None and (done % 64 == 0 or done == total):
                progress(done, total)
    return done


ALLOW_MISSING_TILES = "--allow-missing-tiles"
MISSING_TILES_COLUMN = "missing_tiles"


def patches_on_missing_tiles(slide: Slide, df, level: int = 0) -> tuple[np.ndarray, str | None]:
    """(a boolean per row of ``df``: the patch, read at ``level``, covers a TIFF tile whose
    offset or byte count is zero, the first such tile and patch described in one line naming
    the slide, level and tile, or None). tifffile reads such a tile as black without an error,
    which silently changes a model's prediction; found from the tile tables, nothing decoded.
    Levels built from level 0 are checked on level 0; zarr slides refuse missing chunks when
    they are read (CheckedArray)."""
    mask = np.zeros(len(df), dtype=bool)
    if not slide.source.format.startswith("tiff"):
        return mask, None
    native = level if level < slide.n_native else 0
    tiles = missing_tiles(slide.source, native)
    if not tiles:
        return mask, None
    ds = slide.downsamples[native]
    sides = np.maximum(1, np.round(df["patch_size"].to_numpy(float) / ds))
    x0, y0 = np.round(df["x"].to_numpy(float) / ds), np.round(df["y"].to_numpy(float) / ds)
    first, first_count = None, 0
    for what, (ty0, ty1, tx0, tx1) in tiles:
        hit = (x0 < tx1) & (x0 + sides > tx0) & (y0 < ty1) & (y0 + sides > ty0)
        if first is None and hit.any():
            row, first_count = int(np.flatnonzero(hit)[0]), int(hit.sum())
            first = (
                f"{slide.path}: level {native}: {what}, under {first_count} patch(es), the "
                f"first x={int(df['x'].iat[row])} y={int(df['y'].iat[row])}"
            )
        mask |= hit
    if int(mask.sum()) > first_count:
        first += f" ({int(mask.sum())} patches in all lie on missing tiles)"
    return mask, first
