"""Reads every stored chunk of a slide once, to find missing or corrupt chunks before a long job."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .errors import PathvizError
from .io.source import CheckedArray
from .io.tiff_io import decode_every_tile, tile_table_faults
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
