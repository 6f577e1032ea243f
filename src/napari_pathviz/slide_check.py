"""Reads every stored chunk of a slide once, to find missing or corrupt chunks before a long job."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .io.source import CheckedArray
from .slide import Slide


def check_slide(slide: Slide, progress: Callable[[int, int], None] | None = None) -> int:
    """Raises PathvizError naming the first missing or unreadable chunk; returns chunks read.

    Missing zarr chunks are faults here even where reading allows them: a converted or
    copied slide should have every chunk.
    """
    arrays = []
    for level, array in enumerate(slide.source.arrays[: slide.n_native]):
        inner = array.array if isinstance(array, CheckedArray) else array
        is_zarr_store = not slide.source.format.startswith("tiff")
        arrays.append(CheckedArray(inner, slide.path, level, check_missing=is_zarr_store))
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
