"""Coarser levels of a slide stored at one resolution, as array-likes read on demand.

Building them from dask operations (strided slices, arithmetic, rechunk) materialises a task
per chunk while the slide is opened: 6 s and 290 MB for a 100,000 x 100,000 single array, and
all memory for a header that claims 10^9 x 10^9 pixels. Here each level is a small object whose
``__getitem__`` reads the finer region it needs and averages it, so opening costs nothing per
chunk. The values equal :func:`napari_pathviz.io.pyramid.downsample_2x` (2 x 2 means that trim
an odd edge, integers rounded half up).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .pyramid import MIN_LEVEL_SIZE


class YXCLevel:
    """A stored level read as (y, x, c), whatever order its file keeps the axes in."""

    def __init__(self, array: Any, axes: str):
        self.array, self.axes = array, axes
        size = dict(zip(axes, array.shape, strict=True))
        chunk = dict(zip(axes, getattr(array, "chunks", array.shape), strict=True))
        self.shape = (int(size["y"]), int(size["x"]), int(size.get("c", 1)))
        self.chunks = (int(chunk["y"]), int(chunk["x"]), self.shape[2])
        self.dtype = np.dtype(array.dtype)
        self.ndim = 3

    def __getitem__(self, key: Any) -> np.ndarray:
        (ys, xs, cs), dropped = _three_slices(key, self.shape)
        return self._read(ys, xs, cs)[dropped]

    def _read(self, ys: slice, xs: slice, cs: slice) -> np.ndarray:
        index = tuple(
            ys if a == "y" else xs if a == "x" else cs if a == "c" else 0 for a in self.axes
        )
        region = np.asarray(self.array[index])
        kept = [a for a in self.axes if a in "yxc"]
        region = np.transpose(region, [kept.index(a) for a in "yxc" if a in kept])
        return region if "c" in kept else region[..., None]


class HalvedLevel:
    """The 2 x 2 mean of a finer (y, x, c) level; reads the finer level only when indexed."""

    def __init__(self, finer: Any, chunk: int):
        self.finer = finer
        self.shape = (finer.shape[0] // 2, finer.shape[1] // 2, finer.shape[2])
        self.chunks = (chunk, chunk, self.shape[2])
        self.dtype = np.dtype(finer.dtype)
        self.ndim = 3

    def __getitem__(self, key: Any) -> np.ndarray:
        (ys, xs, cs), dropped = _three_slices(key, self.shape)
        return self._read(ys, xs, cs)[dropped]

    def _read(self, ys: slice, xs: slice, cs: slice) -> np.ndarray:
        fine = np.asarray(
            self.finer[slice(2 * ys.start, 2 * ys.stop), slice(2 * xs.start, 2 * xs.stop), cs]
        )
        is_float = self.dtype.kind == "f"
        wide = fine.astype(np.float32 if is_float else np.uint32)
        # The same order of additions as downsample_2x, so floats agree to the last bit.
        total = wide[0::2, 0::2] + wide[1::2, 0::2] + wide[0::2, 1::2] + wide[1::2, 1::2]
        mean = total / 4 if is_float else (total + 2) // 4
        return mean.astype(self.dtype)


def halved_levels(level0: Any, min_size: int = MIN_LEVEL_SIZE) -> list[Any]:
    """Array-likes for level 0's 2x means, each halving the last, until the larger side is at
    most ``min_size`` (the same levels as pyramid.lazy_levels)."""
    levels: list[Any] = []
    finer = level0
    chunk = max(level0.chunks[0], level0.chunks[1], 256)
    while max(finer.shape[:2]) > min_size and min(finer.shape[:2]) >= 2:
        finer = HalvedLevel(finer, chunk)
        levels.append(finer)
    return levels


def _three_slices(key: Any, shape: tuple[int, int, int]) -> tuple[tuple[slice, ...], tuple]:
    """A (y, x, c) key as three explicit contiguous slices, and the index that then drops the
    axes the key gave as integers (as numpy would)."""
    key = key if isinstance(key, tuple) else (key,)
    key = key + (slice(None),) * (3 - len(key))
    slices, dropped = [], []
    for k, size in zip(key, shape, strict=True):
        if isinstance(k, slice):
            start, stop, step = k.indices(size)
            if step != 1:
                raise IndexError("lazy pyramid levels are read in contiguous regions only")
            slices.append(slice(start, max(start, stop)))
            dropped.append(slice(None))
        else:
            i = int(k) + size if int(k) < 0 else int(k)
            if not 0 <= i < size:
                raise IndexError(f"index {k} is out of bounds for an axis of size {size}")
            slices.append(slice(i, i + 1))
            dropped.append(0)
    return (slices[0], slices[1], slices[2]), tuple(dropped)
