"""The image-UMAP figure (plot-image-umap-embeddings) keeps its outermost thumbnails whole: a
margin of empty canvas lies between them and the axes' lines, which hid their frames."""

from __future__ import annotations

import numpy as np
from PIL import Image

from napari_pathviz.mosaic import mosaic_figure, umap_mosaic
from test_embedding_cli import cache_dir, demo, run_main  # noqa: F401  (module fixtures)


def _inner_ring(rgb: np.ndarray, box, depth: tuple[int, int] = (3, 6)) -> np.ndarray:
    """The pixels ``depth`` px inside the axes' frame (``box``: left, top, right, bottom in
    image pixels), all four sides."""
    left, top, right, bottom = (int(round(v)) for v in box)
    a, b = depth
    return np.concatenate(
        [
            rgb[top + a : top + b, left + a : right - a].reshape(-1, 3),
            rgb[bottom - b : bottom - a, left + a : right - a].reshape(-1, 3),
            rgb[top + a : bottom - a, left + a : left + b].reshape(-1, 3),
            rgb[top + a : bottom - a, right - b : right - a].reshape(-1, 3),
        ]
    )


def test_edge_thumbnails_lie_inside_the_axes_with_a_margin():
    from napari_pathviz._demo import load_demo

    slide, table = load_demo()
    coords = np.random.default_rng(0).normal(size=(len(table), 2))
    mosaic = umap_mosaic(
        {slide.slide_id: slide},
        table,
        coords,
        zoom=0.5,
        canvas=768,
        border=2,
        color_by="annotation",
    )
    # The mosaic's own canvas is filled to its edges: the extreme thumbnails touch them.
    assert (mosaic.image[:, 0] != 255).any() and (mosaic.image[:, -1] != 255).any()
    assert (mosaic.image[0] != 255).any() and (mosaic.image[-1] != 255).any()
    fig = mosaic_figure(mosaic)
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    (ax,) = [a for a in fig.axes if a.get_label() != "<colorbar>" and a.images]
    x0, x1, y0, y1 = mosaic.extent
    lo_x, hi_x = ax.get_xlim()
    lo_y, hi_y = ax.get_ylim()
    assert lo_x < x0 and hi_x > x1 and lo_y < y0 and hi_y > y1  # the whole canvas in view
    extent = ax.get_window_extent()
    height = rgb.shape[0]
    box = (extent.x0, height - extent.y1, extent.x1, height - extent.y0)
    ring = _inner_ring(rgb, box)
    assert (ring >= 250).all(), f"{(ring < 250).any(axis=1).sum()} thumbnail pixels at the edge"


def test_the_cli_figure_keeps_edge_thumbnails_whole(cache_dir, demo, tmp_path):  # noqa: F811
    out = tmp_path / "mosaic.png"
    code, _, stderr = run_main(
        "plot-image-umap-embeddings",
        "-e",
        demo["embeddings"],
        "-i",
        demo["slide"],
        "-o",
        out,
        "--canvas",
        "400",
        "-z",
        "0.25",
        "-nn",
        "10",
    )
    assert code == 0, stderr
    rgb = np.asarray(Image.open(out).convert("RGB"))
    # The axes' frame: its top and bottom are the longest dark lines of the figure, and they
    # run from its left side to its right.
    dark = (rgb < 60).all(axis=2)
    counts = dark.sum(axis=1)
    rows = np.flatnonzero(counts >= 0.9 * counts.max())
    top, bottom = rows.min(), rows.max()
    cols = np.flatnonzero(dark[top])
    box = (cols.min(), top, cols.max(), bottom)
    assert bottom - top > 200 and box[2] - box[0] > 200, box
    ring = _inner_ring(rgb, box)
    assert (ring >= 250).all(), f"{(ring < 250).any(axis=1).sum()} thumbnail pixels at the edge"
    # It is the frame: its sides are dark lines too, top to bottom.
    assert dark[top:bottom, box[0]].mean() > 0.9 and dark[top:bottom, box[2]].mean() > 0.9
