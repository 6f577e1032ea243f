"""Lazily built coarser levels for slides stored at one resolution only."""

from __future__ import annotations

import dask.array as da
import numpy as np

# Stop building levels once the coarsest fits a screen tile: napari shows that one when zoomed out.
MIN_LEVEL_SIZE = 512


def downsample_2x(level: da.Array) -> da.Array:
    """2 x 2 mean of a (y, x, c) dask array, trimming an odd last row/column; stays lazy."""
    h, w = level.shape[0] // 2 * 2, level.shape[1] // 2 * 2
    wide = level.astype(np.float32) if level.dtype.kind == "f" else level.astype(np.uint32)
    total = wide[0:h:2, 0:w:2] + wide[1:h:2, 0:w:2] + wide[0:h:2, 1:w:2] + wide[1:h:2, 1:w:2]
    # Integers round half up, like most pyramid writers.
    out = total / 4 if level.dtype.kind == "f" else (total + 2) // 4
    out = out.astype(level.dtype)
    # Halving shrinks chunks; merge them back so deep levels are not thousands of tiny tasks.
    target = max(level.chunksize[0], level.chunksize[1], 256)
    return out.rechunk((target, target, level.shape[2]))


def lazy_levels(level0: da.Array, min_size: int = MIN_LEVEL_SIZE) -> list[da.Array]:
    """Level 0 followed by 2x means until the larger side is at most ``min_size``."""
    levels = [level0]
    while max(levels[-1].shape[:2]) > min_size and min(levels[-1].shape[:2]) >= 2:
        levels.append(downsample_2x(levels[-1]))
    return levels
