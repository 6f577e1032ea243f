"""Tissue detection on a low-resolution level and the patch grid over the tissue.

Stained tissue is saturated, glass background is grey-white: Otsu's threshold on the HSV
saturation of a thumbnail separates them without reading level 0.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .errors import PathvizError
from .patches import PatchTable
from .slide import Slide

# Below this saturation nothing is tissue, even where Otsu splits plain background in two.
MIN_TISSUE_SATURATION = 0.05


def tissue_mask(
    slide: Slide, mask_pixel: float = 16.0, max_size: int = 8192
) -> tuple[np.ndarray, float]:
    """Boolean tissue mask and its downsample (level-0 pixels per mask pixel).

    The mask is computed at ``mask_pixel`` level-0 pixels a pixel where the slide allows, never
    larger than ``max_size`` on its longer side.
    """
    from scipy import ndimage
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu

    size = min(max_size, max(64, math.ceil(max(slide.height, slide.width) / mask_pixel)))
    thumb, downsample = slide.thumbnail(size)
    if thumb.shape[2] < 3:
        raise PathvizError(f"{slide.path}: tissue detection needs an RGB slide")
    saturation = ndimage.gaussian_filter(rgb2hsv(thumb[..., :3])[..., 1], 1.0)
    if float(saturation.max() - saturation.min()) < 1e-3:
        threshold = MIN_TISSUE_SATURATION
    else:
        threshold = max(float(threshold_otsu(saturation)), MIN_TISSUE_SATURATION)
    mask = saturation > threshold
    # Close small gaps (nuclei-free stroma can be pale) and drop specks of dust.
    mask = ndimage.binary_closing(mask, iterations=2)
    mask = ndimage.binary_opening(mask, iterations=1)
    return mask, downsample


def tissue_grid(
    slide: Slide, patch_size: int, stride: int | None = None, min_tissue: float = 0.5
) -> PatchTable:
    """Non-overlapping (or ``stride``-spaced) patches whose tissue fraction is >= ``min_tissue``.

    The table has PathFlowAI's patch_info layout: the key columns, ``annotation`` and one area
    column per class, ``background`` then ``tissue``, the fractions of the patch each covers.
    ``annotation`` is the class covering most of the patch, by PathFlowAI's rule (argmax over
    the area columns, so "background" on an exact tie).
    """
    if patch_size <= 0:
        raise PathvizError(f"--patch-size must be positive, got {patch_size}")
    stride = stride or patch_size
    if stride <= 0:
        raise PathvizError(f"--stride must be positive, got {stride}")
    if not 0.0 <= min_tissue <= 1.0:
        raise PathvizError(f"--min-tissue must be between 0 and 1, got {min_tissue}")
    if patch_size > min(slide.height, slide.width):
        raise PathvizError(
            f"{slide.path}: patch size {patch_size} is larger than the slide "
            f"({slide.width} x {slide.height})"
        )
    mask, downsample = tissue_mask(slide, mask_pixel=max(1.0, patch_size / 8))
    coverage_of = _coverage_function(mask, downsample)
    ys = np.arange(0, slide.height - patch_size + 1, stride)
    xs = np.arange(0, slide.width - patch_size + 1, stride)
    yy, xx = (g.ravel() for g in np.meshgrid(ys, xs, indexing="ij"))
    coverage = coverage_of(yy, xx, patch_size)
    keep = coverage >= min_tissue if min_tissue > 0 else np.ones_like(coverage, bool)
    tissue = coverage[keep].round(4)
    background = (1.0 - tissue).round(4)
    # Both classes get an area column: PathFlowAI looks each patch's annotation up as a column
    # (modify_patch_info), and `-rb background` drops mostly-empty patches as it does there.
    # Tissue comes last because PathFlowAI's one-target classifier takes the last area column.
    df = pd.DataFrame(
        {
            "ID": slide.slide_id,
            "x": xx[keep].astype(np.int64),
            "y": yy[keep].astype(np.int64),
            "patch_size": np.int64(patch_size),
            "annotation": np.where(tissue > background, "tissue", "background"),
            "background": background,
            "tissue": tissue,
        }
    )
    return PatchTable.from_frame(df, slide.path)


def _coverage_function(mask: np.ndarray, downsample: float):
    """f(y, x, size) -> fraction of mask pixels set under each level-0 square (summed-area table)."""
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.float64)
    table[1:, 1:] = mask.cumsum(0).cumsum(1)

    def coverage(y: np.ndarray, x: np.ndarray, size: int) -> np.ndarray:
        y0 = np.clip(np.floor(y / downsample).astype(int), 0, mask.shape[0] - 1)
        x0 = np.clip(np.floor(x / downsample).astype(int), 0, mask.shape[1] - 1)
        y1 = np.clip(np.ceil((y + size) / downsample).astype(int), y0 + 1, mask.shape[0])
        x1 = np.clip(np.ceil((x + size) / downsample).astype(int), x0 + 1, mask.shape[1])
        total = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
        return total / ((y1 - y0) * (x1 - x0))

    return coverage
