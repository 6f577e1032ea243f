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
from .io.lazy_pyramid import YXCLevel, halved_levels
from .io.source import PyramidSource
from .io.tiff_io import TIFF_SUFFIXES, is_tiff_path, open_tiff
from .io.zarr_io import is_zarr_path, open_zarr

_ID_SUFFIXES = (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif") + TIFF_SUFFIXES
# Real whole-slide images reach about 200,000 x 200,000 px (4e10); 10^11 leaves room for the
# largest while refusing a header that claims 10^9 x 10^9 (PATHVIZ_MAX_PIXELS overrides).
DEFAULT_MAX_PIXELS = 10**11
SUPPORTED_DTYPES = tuple(np.dtype(t) for t in ("uint8", "uint16", "float16", "float32", "float64"))


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
    # Array-likes behind the levels built past the stored ones, read without dask's graph.
    lazy_arrays: list[Any] = field(default_factory=list, repr=False)

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
        """Level-0 pixels per level pixel, per level (from the heights; OpenSlide and tiffslide
        average the height and width ratios, which differs by < 0.1% on odd sizes)."""
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
            region = np.asarray(self.lazy_arrays[level - self.n_native][y0:y1, x0:x1])
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
    """The Slide of a reader's levels. Everything is checked from the header before anything
    is built, and nothing built costs memory in proportion to the slide's size (an absurd
    header must fail fast, not exhaust memory)."""
    check_source(source)
    levels = [_as_yxc_dask(a, source, i) for i, a in enumerate(source.arrays)]
    n_native = len(levels)
    lazy: list[Any] = []
    if build_levels and len(levels) == 1:
        lazy = halved_levels(YXCLevel(source.arrays[0], source.axes))
        levels += [_lazy_dask(level, n_native + k) for k, level in enumerate(lazy)]
    return Slide(
        path=source.path,
        levels=levels,
        source=source,
        n_native=n_native,
        mpp=source.mpp,
        slide_id=slide_id_from_path(source.path),
        metadata=dict(source.metadata),
        lazy_arrays=lazy,
    )


def max_pixels() -> int:
    """The largest slide (level-0 pixels) opened: ``PATHVIZ_MAX_PIXELS`` or 10^11."""
    text = os.environ.get("PATHVIZ_MAX_PIXELS", "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(float(text))
    except (ValueError, OverflowError):
        limit = 0
    if limit < 1:
        raise PathvizError(
            f"PATHVIZ_MAX_PIXELS={text!r}: expected a positive number of pixels, e.g. 2e11"
        )
    return limit


def check_source(source: PyramidSource) -> None:
    """Refuses, from the header alone, levels that do not fit the axes, empty levels, pixel
    types no model or display path handles, and slides larger than :func:`max_pixels`."""
    path, axes = source.path, source.axes
    for i, array in enumerate(source.arrays):
        if len(axes) != len(array.shape):
            raise PathvizError(
                f"{path}: level {i} has {len(array.shape)} dimensions but axes {axes!r}"
            )
        size = dict(zip(axes, (int(n) for n in array.shape), strict=True))
        if size["y"] < 1 or size["x"] < 1 or size.get("c", 1) < 1:
            shape = " x ".join(str(int(n)) for n in array.shape)
            raise PathvizError(f"{path}: level {i} is empty (shape {shape}, axes {axes!r})")
        for a, n in size.items():
            if a not in "yxc" and n != 1:
                raise PathvizError(
                    f"{path}: axis {a!r} has {n} entries; only a single plane is supported"
                )
        if size.get("c", 1) not in (1, 3, 4):
            raise PathvizError(
                f"{path}: expected 1, 3 or 4 channels, found {size['c']} "
                f"(stored axes {axes!r}; pass layout= to say otherwise)"
            )
    dtype = np.dtype(source.arrays[0].dtype)
    if dtype not in SUPPORTED_DTYPES:
        raise PathvizError(
            f"{path}: pixels of type {dtype} are not supported "
            "(slides are uint8, uint16, or float with values in [0, 1])"
        )
    size = dict(zip(axes, (int(n) for n in source.arrays[0].shape), strict=True))
    pixels, limit = size["y"] * size["x"], max_pixels()
    if pixels > limit:
        raise PathvizError(
            f"{path}: {size['x']} x {size['y']} px ({pixels:.3g} pixels) is over the limit of "
            f"{limit:.3g}; real slides are at most a few 10^10: if this one is real, raise "
            "PATHVIZ_MAX_PIXELS"
        )


def _lazy_dask(level: Any, index: int) -> da.Array:
    return da.from_array(
        level,
        chunks=level.chunks,
        lock=False,
        fancy=False,
        meta=np.empty((0, 0, 0), dtype=level.dtype),
        name=f"pathviz-{index}-{uuid.uuid4().hex}",
    )


def _as_yxc_dask(array: Any, source: PyramidSource, level: int) -> da.Array:
    # Through an array-like that transposes each read, not dask's transpose and integer
    # indexing of singleton axes: those materialise a task per chunk when the slide opens.
    return _lazy_dask(YXCLevel(array, source.axes), level)
