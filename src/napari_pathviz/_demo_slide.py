"""The demo slide: distinct fragments of a real IHC image on glass, labelled from the stain.

scikit-image's immunohistochemistry image (512 px; hematoxylin counterstain, DAB-brown positive
epithelium) is enlarged 2x and cut into a grid of non-overlapping cells. Each cell becomes one
tissue fragment: its pixels inside an irregular outline, turned by a seeded random angle (a
multiple of 90 degrees plus up to +-25 degrees) and placed with seeded jitter on glass, as the
fragments of a biopsy lie on a slide. No source pixel is used twice and nothing is mirrored, so
no two patches of the slide are copies of each other.

Pixels are labelled from the stain (HED colour deconvolution): tissue where hematoxylin or DAB
optical density, smoothed over a few nuclei, is above what glass shows; DAB-positive tissue
where DAB density is above Otsu's threshold over the tissue.
"""

from __future__ import annotations

import numpy as np

DEMO_SHAPE = (1408, 1856)  # (height, width): not square, so a swapped axis shows at once
SEED = 20261130
GRID = 3  # the enlarged 1024 px source is cut into GRID x GRID cells, one fragment each
MAX_TILT = 25.0  # degrees, on top of a multiple of 90
# Optical densities (skimage.color.rgb2hed units) above glass: glass shows about 0.0075
# hematoxylin and 0.003 DAB; the palest counterstained stroma, smoothed, about 0.015.
TISSUE_HEMATOXYLIN = 0.0095
TISSUE_DAB = 0.015
STAIN_SMOOTHING = 6.0  # px (sigma): a nucleus or two, so stroma between nuclei is tissue
GAP = 24  # px of glass at least between fragments
CANDIDATES = 600  # random spots tried per fragment
_COARSE = 4  # the placement checks overlap on a 4x coarser grid
_GLASS = np.array([236, 234, 240], np.float32)


def _outline(rng, size: int) -> np.ndarray:
    """An irregular blob filling most of a size x size cell: a superellipse with a smoothed
    random radius, soft-edged (float alpha in [0, 1])."""
    from scipy import ndimage

    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
    angle = np.arctan2(yy, xx)
    # A random radius as a few low harmonics of the angle: lobes, not spikes.
    radius = 0.86 + sum(
        rng.uniform(0, 0.07) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in range(2, 6)
    )
    inside = (np.abs(yy) ** 2.5 + np.abs(xx) ** 2.5) ** (1 / 2.5) < radius
    return ndimage.gaussian_filter(inside.astype(np.float32), 1.5)


def _fragments(rng) -> list[tuple[np.ndarray, np.ndarray]]:
    """(RGB float, alpha) of each fragment, turned; one per source cell, shuffled."""
    from skimage import data, transform

    ihc = data.immunohistochemistry().astype(np.float32)
    big = transform.rescale(ihc, 2, order=1, channel_axis=2, anti_aliasing=False)
    cell = big.shape[0] // GRID
    pieces = []
    for row in range(GRID):
        for col in range(GRID):
            rgb = big[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell]
            alpha = _outline(rng, cell)
            angle = 90.0 * rng.integers(4) + rng.uniform(-MAX_TILT, MAX_TILT)
            stack = np.concatenate([rgb, alpha[..., None]], axis=2)
            turned = transform.rotate(stack, angle, resize=True, order=1, cval=0.0)
            pieces.append((turned[..., :3], np.clip(turned[..., 3], 0, 1)))
    order = rng.permutation(len(pieces))
    return [pieces[i] for i in order]


def _place(slide: np.ndarray, pieces, rng) -> None:
    """Lays the fragments one by one, each at the free spot nearest the slide's centre among
    random candidates: an irregular cluster, as biopsy fragments settle, with glass between."""
    from scipy import ndimage

    h, w = slide.shape[:2]
    occupied = np.zeros((h // _COARSE, w // _COARSE), bool)
    for rgb, alpha in pieces:
        ph, pw = alpha.shape
        # The fragment's footprint on the coarse grid, grown by the gap to keep between fragments.
        foot = ndimage.binary_dilation(
            alpha[::_COARSE, ::_COARSE] > 0.05, iterations=GAP // _COARSE
        )
        ys = rng.integers(0, (h - ph) // _COARSE, CANDIDATES)
        xs = rng.integers(0, (w - pw) // _COARSE, CANDIDATES)
        free = [
            not (occupied[y : y + foot.shape[0], x : x + foot.shape[1]] & foot).any()
            for y, x in zip(ys, xs, strict=True)
        ]
        if not any(free):
            raise RuntimeError("demo slide: no room left for a fragment; enlarge DEMO_SHAPE")
        # Distance of the fragment's centre to the slide's, in units of the slide's size.
        dist = ((ys * _COARSE + ph / 2) / h - 0.5) ** 2 + ((xs * _COARSE + pw / 2) / w - 0.5) ** 2
        best = np.argmin(np.where(free, dist, np.inf))
        cy, cx = ys[best], xs[best]
        occupied[cy : cy + foot.shape[0], cx : cx + foot.shape[1]] |= foot
        y0, x0 = cy * _COARSE, cx * _COARSE
        region = slide[y0 : y0 + ph, x0 : x0 + pw]
        a = alpha[..., None]
        region[...] = a * rgb + (1 - a) * region


def _large_holes(mask: np.ndarray, min_area: int = 400) -> np.ndarray:
    """Holes of the mask at least min_area pixels large (lumina stay glass; specks are filled)."""
    from scipy import ndimage

    holes = ndimage.binary_fill_holes(mask) & ~mask
    labels, n = ndimage.label(holes)
    sizes = ndimage.sum(holes, labels, np.arange(1, n + 1))
    return np.isin(labels, 1 + np.flatnonzero(sizes >= min_area))


def stain_classes(slide: np.ndarray) -> np.ndarray:
    """Per-pixel classes from the HED deconvolution: 0 glass, 1 DAB-negative, 2 DAB-positive."""
    from scipy import ndimage
    from skimage import color, filters, morphology

    hed = color.rgb2hed(slide)
    hematoxylin = ndimage.gaussian_filter(hed[..., 0], STAIN_SMOOTHING)
    dab = ndimage.gaussian_filter(hed[..., 2], STAIN_SMOOTHING)
    tissue = (hematoxylin > TISSUE_HEMATOXYLIN) | (dab > TISSUE_DAB)
    # Close gaps between nuclei, drop specks, fill small lumina-free holes.
    tissue = ndimage.binary_closing(tissue, morphology.disk(5))
    tissue = ndimage.binary_opening(tissue, morphology.disk(3))
    tissue = ndimage.binary_fill_holes(tissue) & ~_large_holes(tissue)
    classes = np.zeros(slide.shape[:2], np.uint8)
    classes[tissue] = 1
    dab_detail = ndimage.gaussian_filter(hed[..., 2], 6)
    classes[tissue & (dab_detail > filters.threshold_otsu(dab_detail[tissue]))] = 2
    return classes


def build_demo_slide() -> tuple[np.ndarray, np.ndarray]:
    """The demo slide (H x W x 3 uint8) and its per-pixel class map (0 glass, 1 DAB-, 2 DAB+)."""
    rng = np.random.default_rng(SEED)
    h, w = DEMO_SHAPE
    slide = np.broadcast_to(_GLASS, (h, w, 3)).copy()
    _place(slide, _fragments(rng), rng)
    slide += rng.normal(0, 2.0, size=slide.shape).astype(np.float32)  # sensor noise
    slide = np.clip(slide, 0, 255).round().astype(np.uint8)
    return slide, stain_classes(slide)
