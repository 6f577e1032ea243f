"""The cohort explorer's image mosaic: one patch per grid cell of the scatter, read lazily from
its own slide, so a 1M-patch cohort costs at most ``grid * grid`` patch reads, never 1M.

Pure numpy and the core's thumbnail reader (no Qt): it runs in a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import Cancelled

GAP_GREY = 235  # an empty cell, or one whose slide does not open


@dataclass
class GridMosaic:
    """``image``: ``grid`` x ``grid`` cells of ``thumb`` px; ``picks[c]`` is the row (of the
    rows given) drawn in cell ``cells[c]`` (flat index row-major, row 0 at the top)."""

    image: np.ndarray
    picks: np.ndarray
    cells: np.ndarray
    grid: int
    thumb: int
    reads: int = 0
    slides_opened: list[str] = field(default_factory=list)
    failed_slides: dict[str, str] = field(default_factory=dict)


def pick_per_cell(coords: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """(picks, cells): for every occupied cell of a ``grid`` x ``grid`` partition of the 2-D
    coordinates' bounding box, the point nearest the cell's centre. O(N log N), no N x cells
    temporary."""
    xy = np.asarray(coords, np.float64)[:, :2]
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    unit = (xy - lo) / span * grid
    col = np.clip(unit[:, 0].astype(np.int64), 0, grid - 1)
    row = np.clip((grid - unit[:, 1]).astype(np.int64), 0, grid - 1)  # UMAP y up, rows down
    cell = row * grid + col
    centre = np.stack([col + 0.5, grid - (row + 0.5)], axis=1)
    distance = ((unit - centre) ** 2).sum(axis=1)
    order = np.lexsort((distance, cell))  # by cell, nearest first
    first = np.ones(len(order), dtype=bool)
    first[1:] = cell[order][1:] != cell[order][:-1]
    picks = order[first]
    return picks, cell[picks]


def cohort_mosaic(
    rows: pd.DataFrame,
    coords: np.ndarray,
    open_slide,
    *,
    grid: int = 24,
    thumb: int = 48,
    progress=None,
    cancelled=None,
) -> GridMosaic:
    """Draws one patch per occupied cell. ``rows`` has ``ID``, ``x``, ``y``, ``patch_size``;
    ``open_slide(ID)`` returns a Slide or raises (that slide's cells stay grey, named in
    ``failed_slides``). Each slide is opened once."""
    from ..mosaic import read_thumbnail

    picks, cells = pick_per_cell(coords, grid)
    image = np.full((grid * thumb, grid * thumb, 3), GAP_GREY, np.uint8)
    out = GridMosaic(image, picks, cells, grid, thumb)
    slides: dict = {}
    ids = rows["ID"].astype(str).to_numpy()
    xs, ys, sizes = (rows[c].to_numpy() for c in ("x", "y", "patch_size"))
    for n, (i, c) in enumerate(zip(picks, cells, strict=True)):
        if cancelled is not None and cancelled():
            raise Cancelled("mosaic cancelled")
        slide = _slide(ids[i], open_slide, slides, out)
        if slide is None:
            continue
        r, k = divmod(int(c), grid)
        image[r * thumb : (r + 1) * thumb, k * thumb : (k + 1) * thumb] = read_thumbnail(
            slide, int(ys[i]), int(xs[i]), int(sizes[i]), thumb
        )
        out.reads += 1
        if progress is not None and n % 32 == 0:
            progress(n / len(picks), f"mosaic: {n} of {len(picks)} cells")
    return out


def _slide(slide_id: str, open_slide, slides: dict, out: GridMosaic):
    if slide_id not in slides:
        try:
            slides[slide_id] = open_slide(slide_id)
            out.slides_opened.append(slide_id)
        except Exception as err:  # a slide that does not open leaves its cells grey
            slides[slide_id] = None
            out.failed_slides[slide_id] = str(err)
    return slides[slide_id]
