"""Attribution maps of many patches as ONE lazy multiscale image over the slide.

Hundreds of explained patches must not become hundreds of layers: each pyramid level is a dask
array of the slide's shape whose blocks are computed on demand from the maps of the patches that
touch them (NaN, shown transparent, elsewhere). Level k has the slide's level-k shape, so it
lines up with the slide in napari like the slide's own pyramid.
"""

from __future__ import annotations

import numpy as np

from ..errors import PathvizError

BLOCK = 512


def attribution_pyramid(
    maps: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    sizes: np.ndarray,
    level_shapes: list[tuple[int, int]],
) -> list:
    """Lazy float32 levels (one per ``level_shapes``) with each patch's map over its pixels.

    A patch at level-0 (y, x) of side P covers level-k pixels [y/d, (y+P)/d) with d the level's
    downsample; its map (h x w, any size) is resized to fit, as napari draws the slide.
    """
    import dask.array as da

    if not (len(maps) == len(x) == len(y) == len(sizes)):
        raise PathvizError("attribution layer: maps and patch keys differ in length")
    height0 = level_shapes[0][0]
    levels = []
    for shape in level_shapes:
        d = height0 / shape[0]
        top = np.floor(y / d).astype(np.int64)
        left = np.floor(x / d).astype(np.int64)
        side = np.maximum(1, np.round(sizes / d).astype(np.int64))
        cache: dict[int, np.ndarray] = {}

        def block(block_info=None, top=top, left=left, side=side, cache=cache):
            (r0, r1), (c0, c1) = block_info[None]["array-location"][:2]
            out = np.full((r1 - r0, c1 - c0), np.nan, np.float32)
            hit = np.flatnonzero((top < r1) & (top + side > r0) & (left < c1) & (left + side > c0))
            for i in hit:
                tile = cache.get(i)
                if tile is None:
                    tile = cache[i] = _fit(maps[i], int(side[i]))
                ys, xs = (
                    slice(max(top[i], r0), min(top[i] + side[i], r1)),
                    slice(max(left[i], c0), min(left[i] + side[i], c1)),
                )
                out[ys.start - r0 : ys.stop - r0, xs.start - c0 : xs.stop - c0] = tile[
                    ys.start - top[i] : ys.stop - top[i], xs.start - left[i] : xs.stop - left[i]
                ]
            return out

        chunks = tuple(_chunks(n) for n in shape)
        levels.append(
            da.map_blocks(block, dtype=np.float32, chunks=chunks, meta=np.empty((0, 0), np.float32))
        )
    return levels


def smooth_maps(maps, sigma: float) -> np.ndarray:
    """Each map (N x h x w) blurred on its own by a Gaussian of ``sigma`` map pixels; sigma 0
    returns the maps unchanged.

    Expected gradients leave a dot lattice (pixels of a 2-px grid carry most of the
    attribution); a sigma of about 1.5 px spreads it into the structure it marks. The blur
    reflects at the map's edges (half-sample symmetric), so each map keeps its sum: no
    attribution leaks out of its patch or into a neighbour's.
    """
    if sigma < 0:
        raise PathvizError(f"map smoothing: sigma must be >= 0 px, got {sigma:g}")
    maps = np.asarray(maps, np.float32)
    if sigma == 0:
        return maps
    from scipy.ndimage import gaussian_filter

    if maps.ndim < 3:
        raise PathvizError(f"map smoothing: expected N x h x w maps, got shape {maps.shape}")
    axes_sigma = (0,) * (maps.ndim - 2) + (sigma, sigma)
    return gaussian_filter(maps, sigma=axes_sigma, mode="reflect", truncate=4.0)


def _chunks(n: int) -> tuple[int, ...]:
    full, rest = divmod(n, BLOCK)
    return (BLOCK,) * full + ((rest,) if rest else ())


def _fit(m: np.ndarray, side: int) -> np.ndarray:
    if m.shape == (side, side):
        return m.astype(np.float32)
    from skimage.transform import resize

    return resize(
        m.astype(np.float32),
        (side, side),
        order=1,
        anti_aliasing=side < m.shape[0],
        preserve_range=True,
    ).astype(np.float32)
