"""The patches themselves drawn at their UMAP positions (PathFlowAI's plot_image_umap_embeddings).

Thumbnails are read from a low pyramid level (never level 0 for a small thumbnail), so a mosaic
of thousands of patches reads a few MB rather than the slides.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import PathvizError
from .patches import PatchTable
from .slide import Slide, open_slide

MARGIN = 0.02  # of the mosaic's extent, empty canvas around it in the figure
SLIDE_SUFFIXES = (".zarr", ".ome.zarr", ".svs", ".tif", ".tiff", ".ome.tif", ".ome.tiff", ".ndpi")


@dataclass
class Mosaic:
    """An RGB canvas and where each patch's thumbnail sits on it (top-left, canvas pixels)."""

    image: np.ndarray
    origins: np.ndarray  # (N, 2) row, col of each thumbnail's top-left
    thumb: int
    order: np.ndarray  # drawing order (last on top)
    extent: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0)  # UMAP x0, x1, y0, y1
    colours: object = None  # render.ColorMapping of the thumbnail borders, when coloured
    background: int = 255  # grey level of the empty canvas


def find_slides(source: str | os.PathLike, ids, layout: str = "auto") -> dict[str, Slide]:
    """Opens the slide for every ID: ``source`` is one slide, or a folder searched for
    ``{ID}.zarr``, ``{ID}.ome.zarr``, ``{ID}.svs``, ``{ID}.tif`` ..."""
    source = Path(source)
    ids = [str(i) for i in dict.fromkeys(ids)]
    if not source.exists():
        raise PathvizError(f"{source}: no such file or directory")
    is_slide_dir = source.is_dir() and (
        source.suffix == ".zarr" or (source / ".zattrs").exists() or (source / "zarr.json").exists()
    )
    if not source.is_dir() or is_slide_dir:
        if len(ids) > 1:
            raise PathvizError(
                f"{source}: one slide given but the patches come from {len(ids)} "
                f"slides ({', '.join(ids[:4])}); give a folder, or one slide with -b"
            )
        slide = open_slide(source, layout)
        # One slide serves the table's one ID even where its file is named otherwise.
        return {ids[0] if ids else slide.slide_id: slide}
    found = {}
    for slide_id in ids:
        for suffix in SLIDE_SUFFIXES:
            candidate = source / f"{slide_id}{suffix}"
            if candidate.exists():
                found[slide_id] = open_slide(candidate, layout)
                break
        else:
            raise PathvizError(
                f"{source}: no slide file for ID {slide_id!r} "
                f"(looked for {slide_id}{{{','.join(SLIDE_SUFFIXES)}}})"
            )
    return found


def umap_mosaic(
    slides: dict[str, Slide],
    table: PatchTable,
    coords: np.ndarray,
    *,
    zoom: float = 0.25,
    canvas: int = 2048,
    sort_col: str | None = None,
    sort_mode: str = "asc",
    background: int = 255,
    border: int = 0,
    color_by: str | None = None,
) -> Mosaic:
    """Draws each patch, shrunk by ``zoom``, centred at its 2-D UMAP position on a square canvas.

    ``sort_col``/``sort_mode`` set the drawing order (the last drawn is on top), as PathFlowAI's
    ``-sc``/``-sm`` do. ``border`` px frame each thumbnail (inside its square), in the colour of
    its ``color_by`` value (see render.column_colors), or dark grey: glass patches then stand
    out from the white canvas.
    """
    if coords.ndim != 2 or coords.shape[1] < 2 or len(coords) != len(table):
        raise PathvizError(
            f"mosaic needs 2-D coordinates for {len(table)} patches, got shape {coords.shape}"
        )
    if not 0 < zoom <= 4:
        raise PathvizError(f"--zoom must be in (0, 4], got {zoom}")
    df = table.df
    thumb = mosaic_thumb(table, zoom)
    if thumb * 2 > canvas:
        raise PathvizError(
            f"--zoom {zoom}: thumbnails of {thumb} px do not fit a {canvas} px canvas"
        )
    xy = coords[:, :2].astype(np.float64)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    usable = canvas - thumb
    # UMAP x to canvas columns, UMAP y up to canvas rows down (as a scatter plot reads).
    cols = np.round((xy[:, 0] - lo[0]) / span[0] * usable).astype(int)
    rows = np.round((hi[1] - xy[:, 1]) / span[1] * usable).astype(int)

    order = np.arange(len(df))
    if sort_col:
        if sort_col not in df.columns:
            raise PathvizError(f"--sort_col: no column {sort_col!r}")
        if sort_mode not in ("asc", "desc"):
            raise PathvizError(f"--sort_mode must be asc or desc, got {sort_mode!r}")
        order = np.argsort(df[sort_col].to_numpy(), kind="stable")
        if sort_mode == "desc":
            order = order[::-1]
    image = np.full((canvas, canvas, 3), background, np.uint8)
    frames, colours = _frame_colours(df, color_by, border)
    for i in order:
        slide_id = str(df["ID"].iat[i])
        if slide_id not in slides:
            raise PathvizError(f"no slide for patch ID {slide_id!r}")
        image[rows[i] : rows[i] + thumb, cols[i] : cols[i] + thumb] = read_thumbnail(
            slides[slide_id],
            int(df["y"].iat[i]),
            int(df["x"].iat[i]),
            int(df["patch_size"].iat[i]),
            thumb,
        )
        if frames is not None:
            _draw_frame(image, rows[i], cols[i], thumb, border, frames[i])
    # Canvas edges in UMAP units (thumbnail centres span the usable part).
    half = thumb / 2 / usable * span
    extent = (lo[0] - half[0], hi[0] + half[0], lo[1] - half[1], hi[1] + half[1])
    return Mosaic(image, np.stack([rows, cols], axis=1), thumb, order, extent, colours, background)


def mosaic_thumb(table: PatchTable, zoom: float) -> int:
    """The thumbnail side umap_mosaic draws for ``table`` at ``zoom``."""
    return max(4, round(int(np.median(table.df["patch_size"])) * zoom))


def mosaic_colour_column(df, requested: str | None) -> str:
    """The column framing the thumbnails: the one asked for, else annotation, else ID."""
    if requested:
        if requested not in df.columns:
            raise PathvizError(f"--color-by: no column {requested!r}")
        return requested
    return "annotation" if "annotation" in df.columns else "ID"


def _frame_colours(df, color_by: str | None, border: int):
    """(N, 3) uint8 frame colour per patch (None without a border) and the colour mapping."""
    if border <= 0:
        return None, None
    if color_by is None:
        return np.full((len(df), 3), 90, np.uint8), None
    from .render import column_colors

    mapping = column_colors(df, color_by)
    return (mapping.rgba[:, :3] * 255).round().astype(np.uint8), mapping


def _draw_frame(image: np.ndarray, row: int, col: int, thumb: int, width: int, colour) -> None:
    width = min(width, thumb // 4)
    square = image[row : row + thumb, col : col + thumb]
    square[:width] = colour
    square[-width:] = colour
    square[:, :width] = colour
    square[:, -width:] = colour


def mosaic_figure(mosaic: Mosaic, title: str | None = None, n_patches: int | None = None):
    """The mosaic as a matplotlib Figure: UMAP axes, a title, and a key (legend or colorbar)
    for the thumbnail frames' colours."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .render import add_key, column_title, fit_to_content

    side = mosaic.image.shape[0]
    key = 1.6 if mosaic.colours is not None else 0.0
    inches = max(4.0, side / 150)
    fig = Figure(figsize=(inches + 0.8 + key, inches + 0.9), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x0, x1, y0, y1 = mosaic.extent
    ax.imshow(mosaic.image, extent=(x0, x1, y0, y1), interpolation="antialiased")
    # The outermost thumbnails touch the canvas's edges: a margin of empty canvas keeps their
    # frames clear of the axes' lines, which hid (cut) them.
    pad = MARGIN * max(x1 - x0, y1 - y0)
    ax.set_xlim(x0 - pad, x1 + pad)
    ax.set_ylim(y0 - pad, y1 + pad)
    ax.set_facecolor(np.full(3, mosaic.background / 255.0))
    ax.set_xlabel("UMAP 1", fontsize=7)
    ax.set_ylabel("UMAP 2", fontsize=7)
    ax.tick_params(labelsize=6)
    n = len(mosaic.order) if n_patches is None else n_patches
    default = f"Patches at their UMAP positions ({n} patches)"
    if mosaic.colours is not None:
        default += f", framed by {column_title(mosaic.colours.column)}"
    ax.set_title(title or default, fontsize=8)
    add_key(fig, ax, mosaic.colours)
    return fit_to_content(fig)


def render_mosaic(mosaic: Mosaic, out: str | os.PathLike, title: str | None = None) -> Path:
    """Writes :func:`mosaic_figure` (title, axes, key) as a PNG."""
    from .io.atomic import save_figure

    return save_figure(mosaic_figure(mosaic, title), out)


def read_thumbnail(slide: Slide, y: int, x: int, size: int, thumb: int) -> np.ndarray:
    """A ``thumb`` x ``thumb`` RGB image of the level-0 patch, read from the coarsest level that
    still has at least ``thumb`` pixels across it."""
    from skimage.transform import resize

    level = slide.best_level_for_downsample(size / thumb)
    ds = slide.downsamples[level]
    side = max(1, round(size / ds))
    region = slide.read_region(round(y / ds), round(x / ds), side, side, level)[..., :3]
    if region.shape[2] == 1:
        region = np.repeat(region, 3, axis=2)
    if side == thumb:
        return region
    return (
        resize(region, (thumb, thumb, 3), order=1, anti_aliasing=side > thumb, preserve_range=True)
        .round()
        .astype(np.uint8)
    )
