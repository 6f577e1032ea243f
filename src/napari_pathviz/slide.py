"""Slide: a lazy multiscale pyramid (list of dask arrays, y x c) plus its metadata.

Coordinates are level-0 pixels, row (y) then column (x), whatever order the file stores.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from .errors import PathvizError
from .io.pyramid import lazy_levels
from .io.source import PyramidSource
from .io.tiff_io import TIFF_SUFFIXES, is_tiff_path, open_tiff
from .io.zarr_io import is_zarr_path, open_zarr

_ID_SUFFIXES = (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif") + TIFF_SUFFIXES


def slide_id_from_path(path: str | os.PathLike) -> str:
    """The slide's basename without format suffixes: PathFlowAI's ``ID``."""
    name = Path(str(path).rstrip("/")).name
    for suffix in _ID_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass
class Slide:
    """A whole-slide image opened lazily; nothing is read until a region is asked for."""

    path: str
    levels: list[da.Array]
    source: PyramidSource
    n_native: int
    mpp: float | None = None
    slide_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.levels[0].shape)  # type: ignore[return-value]

    @property
    def height(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]

    @property
    def rgb(self) -> bool:
        return self.shape[2] in (3, 4)

    @property
    def downsamples(self) -> list[float]:
        """Level-0 pixels per level pixel, per level (from the heights, as OpenSlide does)."""
        return [self.height / lv.shape[0] for lv in self.levels]

    def best_level_for_downsample(self, downsample: float) -> int:
        """The finest level no coarser than ``downsample``."""
        candidates = [i for i, d in enumerate(self.downsamples) if d <= downsample * 1.001]
        return max(candidates) if candidates else 0

    def level_for_mpp(self, target_mpp: float) -> int:
        """The level closest to ``target_mpp`` microns per pixel without being coarser."""
        if target_mpp <= 0:
            raise PathvizError(f"--target-mpp must be positive, got {target_mpp}")
        if not self.mpp:
            raise PathvizError(
                f"{self.path}: the file does not say its microns per pixel; "
                "choose a --level instead of --target-mpp"
            )
        return self.best_level_for_downsample(target_mpp / self.mpp)

    def read_region(self, y: int, x: int, height: int, width: int, level: int = 0) -> np.ndarray:
        """Pixels of a (y, x, c) region at ``level``; y, x, height, width are in that level's pixels.

        Parts outside the slide are zero. Native levels are read straight from the file's arrays
        (no dask graph per read, which would cost more than the read itself for one patch).
        """
        if not 0 <= level < len(self.levels):
            raise PathvizError(
                f"{self.path}: level {level} does not exist "
                f"(the slide has {len(self.levels)} levels)"
            )
        lh, lw, c = (int(s) for s in self.levels[level].shape)
        y0, x0 = max(int(y), 0), max(int(x), 0)
        y1, x1 = min(int(y) + int(height), lh), min(int(x) + int(width), lw)
        if y1 <= y0 or x1 <= x0:
            return np.zeros((height, width, c), self.levels[level].dtype)
        if level < self.n_native:
            region = self._read_native(level, y0, y1, x0, x1)
        else:
            region = np.asarray(self.levels[level][y0:y1, x0:x1].compute())
        if region.shape[:2] == (height, width):
            return region
        out = np.zeros((height, width, c), region.dtype)
        out[y0 - y : y1 - y, x0 - x : x1 - x] = region
        return out

    def _read_native(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        axes = self.source.axes
        index = []
        for a in axes:
            index.append(
                slice(y0, y1)
                if a == "y"
                else slice(x0, x1)
                if a == "x"
                else slice(None)
                if a == "c"
                else 0
            )
        region = self.source.arrays[level][tuple(index)]
        kept = [a for a in axes if a in "yxc"]
        region = np.transpose(region, [kept.index(a) for a in "yxc" if a in kept])
        return region if "c" in kept else region[..., None]

    def thumbnail(self, max_size: int = 1024) -> tuple[np.ndarray, float]:
        """An RGB image whose larger side is at most ``max_size``, and its downsample factor.

        Reads the coarsest level that is at least that large, never level 0 of a big slide.
        """
        from skimage.transform import resize

        target = max(self.height, self.width) / max_size
        level = self.best_level_for_downsample(max(target, 1.0))
        lh, lw = self.levels[level].shape[:2]
        image = self.read_region(0, 0, lh, lw, level)
        scale = min(1.0, max_size / max(lh, lw))
        if scale < 1.0:
            shape = (max(1, round(lh * scale)), max(1, round(lw * scale)), image.shape[2])
            image = (
                resize(image, shape, order=1, anti_aliasing=True, preserve_range=True)
                .round()
                .astype(image.dtype)
            )
        return image, self.height / image.shape[0]

    def describe(self) -> str:
        lines = [
            f"{self.path}",
            f"  id: {self.slide_id}",
            f"  format: {self.source.format}",
            f"  stored axes: {self.source.axes}",
            f"  microns per pixel: {self.mpp if self.mpp else 'unknown'}",
            f"  levels: {len(self.levels)} ({self.n_native} stored, "
            f"{len(self.levels) - self.n_native} built lazily)",
        ]
        for i, (lv, ds) in enumerate(zip(self.levels, self.downsamples, strict=True)):
            lines.append(
                f"    {i}: {lv.shape[0]} x {lv.shape[1]} x {lv.shape[2]} {lv.dtype}, "
                f"downsample {ds:g}, chunks {lv.chunksize[0]} x {lv.chunksize[1]}"
            )
        return "\n".join(lines)


def open_slide(
    path: str | os.PathLike,
    layout: str = "auto",
    *,
    allow_untiled: bool = False,
    allow_missing_chunks: bool = False,
    build_levels: bool = True,
) -> Slide:
    """Opens a slide file or folder lazily (zarr/OME-Zarr, SVS, TIFF, OME-TIFF, NDPI).

    ``layout`` forces the stored axis order of a single zarr array ("yxc", "xyc" for PathFlowAI,
    "cyx"); "auto" reads it from metadata or, for PathFlowAI, from the patch database beside it.
    """
    path = str(path)
    if not os.path.exists(path):
        raise PathvizError(f"{path}: no such file or directory")
    if is_zarr_path(path):
        source = open_zarr(path, layout, allow_missing_chunks=allow_missing_chunks)
    elif is_tiff_path(path):
        source = open_tiff(path, allow_untiled=allow_untiled)
    else:
        raise PathvizError(
            f"{path}: not a slide format pathviz reads (zarr, OME-Zarr, {', '.join(TIFF_SUFFIXES)})"
        )
    return slide_from_source(source, build_levels=build_levels)


def slide_from_source(source: PyramidSource, build_levels: bool = True) -> Slide:
    levels = [_as_yxc_dask(a, source, i) for i, a in enumerate(source.arrays)]
    n_native = len(levels)
    if build_levels and len(levels) == 1:
        levels = lazy_levels(levels[0])
    channels = levels[0].shape[2]
    if channels not in (1, 3, 4):
        raise PathvizError(
            f"{source.path}: expected 1, 3 or 4 channels, found {channels} "
            f"(stored axes {source.axes!r}; pass layout= to say otherwise)"
        )
    return Slide(
        path=source.path,
        levels=levels,
        source=source,
        n_native=n_native,
        mpp=source.mpp,
        slide_id=slide_id_from_path(source.path),
        metadata=dict(source.metadata),
    )


def _as_yxc_dask(array: Any, source: PyramidSource, level: int) -> da.Array:
    axes = source.axes
    if len(axes) != array.ndim:
        raise PathvizError(
            f"{source.path}: level {level} has {array.ndim} dimensions but axes {axes!r}"
        )
    meta = np.empty((0,) * array.ndim, dtype=array.dtype)
    arr = da.from_array(
        array,
        chunks=array.chunks,
        lock=False,
        fancy=False,
        meta=meta,
        name=f"pathviz-{level}-{uuid.uuid4().hex}",
    )
    index = tuple(slice(None) if a in "yxc" else 0 for a in axes)
    for a, size in zip(axes, array.shape, strict=True):
        if a not in "yxc" and size != 1:
            raise PathvizError(
                f"{source.path}: axis {a!r} has {size} entries; only a single plane is supported"
            )
    arr = arr[index]
    kept = [a for a in axes if a in "yxc"]
    arr = arr.transpose([kept.index(a) for a in "yxc" if a in kept])
    return arr if "c" in kept else arr[..., None]
