"""Colours for patch columns and static figures (PNG) of a slide with its patches.

The same colour mapping feeds napari's points layer and the headless figures, so a patch has one
colour wherever it is shown. Uses matplotlib's object API (no pyplot): no global backend state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import PathvizError
from .patches import PatchTable

# Integer columns with at most this many distinct values are labels, not measurements.
MAX_CATEGORIES = 20


@dataclass
class ColorMapping:
    """RGBA colour per row plus what a legend or colorbar needs."""

    column: str
    rgba: np.ndarray
    kind: str  # "categorical" or "continuous"
    categories: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    colormap: str = "viridis"
    limits: tuple[float, float] = (0.0, 1.0)


def is_categorical(values: pd.Series) -> bool:
    if isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == bool:
        return True
    if pd.api.types.is_float_dtype(values):
        return False
    if pd.api.types.is_integer_dtype(values):
        return values.nunique() <= MAX_CATEGORIES
    return True


def column_colors(
    df: pd.DataFrame,
    column: str,
    colormap: str = "viridis",
    limits: tuple[float, float] | None = None,
) -> ColorMapping:
    """Colours rows by ``column``: a colour cycle for labels, a colormap for numbers.

    Continuous limits default to [0, 1] when every value lies there (coverage, probability), so
    colours are comparable across slides; otherwise to the column's range.
    """
    from matplotlib import colormaps

    if column not in df.columns:
        raise PathvizError(
            f"colour column {column!r} is not in the table "
            f"(columns: {', '.join(map(str, df.columns))})"
        )
    values = df[column]
    if is_categorical(values):
        labels = values.astype(str)
        names = sorted(labels.unique(), key=_natural_key)
        palette = colormaps["tab10" if len(names) <= 10 else "tab20"]
        colours = np.array([palette(i % palette.N) for i in range(len(names))], np.float32)
        categories = {name: tuple(float(v) for v in colours[i]) for i, name in enumerate(names)}
        # Index the palette by category codes: vectorised, a million rows in milliseconds.
        codes = pd.Categorical(labels, categories=names).codes
        rgba = colours.reshape(-1, 4)[codes] if len(names) else np.zeros((0, 4), np.float32)
        return ColorMapping(column, rgba, "categorical", categories=categories)
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    finite = numbers[np.isfinite(numbers)]
    if limits is None:
        if finite.size and finite.min() >= 0 and finite.max() <= 1:
            limits = (0.0, 1.0)
        elif finite.size:
            limits = (float(finite.min()), float(finite.max()))
        else:
            limits = (0.0, 1.0)
    lo, hi = limits
    scaled = (numbers - lo) / (hi - lo) if hi > lo else np.zeros_like(numbers)
    if colormap not in colormaps:
        raise PathvizError(f"unknown colormap {colormap!r}")
    rgba = colormaps[colormap](np.clip(np.nan_to_num(scaled, nan=0.0), 0, 1)).astype(np.float32)
    rgba[~np.isfinite(numbers)] = (0.5, 0.5, 0.5, 1.0)  # missing values in grey
    return ColorMapping(column, rgba, "continuous", colormap=colormap, limits=(lo, hi))


def _natural_key(name: str):
    return (0, float(name), name) if _is_number(name) else (1, 0.0, name)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def patch_overlay(
    shape: tuple[int, int],
    table: PatchTable,
    colors: np.ndarray,
    downsample: float,
    alpha: float = 0.45,
) -> np.ndarray:
    """An RGBA float image of ``shape`` with each patch filled in its colour (later rows on top)
    and outlined opaque, at ``downsample`` level-0 pixels per image pixel."""
    overlay = np.zeros((*shape, 4), np.float32)
    df = table.df
    y0 = np.floor(df["y"].to_numpy() / downsample).astype(int)
    x0 = np.floor(df["x"].to_numpy() / downsample).astype(int)
    y1 = np.maximum(
        np.ceil((df["y"] + df["patch_size"]).to_numpy() / downsample).astype(int), y0 + 1
    )
    x1 = np.maximum(
        np.ceil((df["x"] + df["patch_size"]).to_numpy() / downsample).astype(int), x0 + 1
    )
    outline = (y1 - y0) >= 6
    for i in range(len(df)):
        color = colors[i]
        overlay[y0[i] : y1[i], x0[i] : x1[i]] = (*color[:3], alpha)
        if outline[i]:
            edge = (*color[:3], 1.0)
            overlay[y0[i], x0[i] : x1[i]] = edge
            overlay[y1[i] - 1, x0[i] : x1[i]] = edge
            overlay[y0[i] : y1[i], x0[i]] = edge
            overlay[y0[i] : y1[i], x1[i] - 1] = edge
    return overlay


def slide_patches_figure(
    slide,
    table: PatchTable | None,
    *,
    color_by: str | None = None,
    max_size: int = 1600,
    alpha: float = 0.45,
    title: str | None = None,
):
    """A matplotlib Figure of the slide thumbnail with its patches coloured by a column, with a
    title, axes in µm (px where the pixel size is unknown) and a legend or colorbar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    thumb, downsample = slide.thumbnail(max_size)
    image = (
        thumb[..., :3].astype(np.float32) / np.iinfo(thumb.dtype).max
        if thumb.dtype.kind in "ui"
        else thumb[..., :3]
    )
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    mapping = None
    if table is not None and len(table):
        column = color_by or ("annotation" if "annotation" in table.df.columns else "ID")
        mapping = column_colors(table.df, column)
        overlay = patch_overlay(image.shape[:2], table, mapping.rgba, downsample, alpha)
        a = overlay[..., 3:4]
        image = image * (1 - a) + overlay[..., :3] * a

    fig = Figure(figsize=_figure_size(image.shape[:2], mapping), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    # Axes in µm where the slide's pixel size is known, else in level-0 pixels (the table's
    # x and y): either way a reader can measure on the figure.
    scale, unit = (slide.mpp, "µm") if slide.mpp else (1.0, "px")
    ax.imshow(
        np.clip(image, 0, 1),
        extent=(
            -0.5 * scale,
            (slide.width - 0.5) * scale,
            (slide.height - 0.5) * scale,
            -0.5 * scale,
        ),
        interpolation="antialiased",
    )
    ax.set_xlabel(f"x ({unit})", fontsize=7)
    ax.set_ylabel(f"y ({unit})", fontsize=7)
    ax.tick_params(labelsize=6)
    n = 0 if table is None else len(table)
    ax.set_title(title or _slide_title(slide, n, mapping), fontsize=8)
    add_key(fig, ax, mapping)
    return fit_to_content(fig)


def render_slide_with_patches(
    slide,
    table: PatchTable | None,
    out: str | os.PathLike,
    **options,
) -> Path:
    """Writes :func:`slide_patches_figure` as a PNG: the headless twin of the napari view."""
    from .io.atomic import save_figure

    return save_figure(slide_patches_figure(slide, table, **options), out)


def column_title(column: str) -> str:
    """How a colour column reads in a title or key: ``prob_<class>`` as the class's probability."""
    if column.startswith("prob_") and len(column) > 5:
        return f"probability of {column[5:]}"
    if column == "y_pred":
        return "predicted class"
    return column


def _slide_title(slide, n: int, mapping: ColorMapping | None) -> str:
    title = f"{slide.slide_id}: {n} patches"
    if mapping is not None:
        title += f", coloured by {column_title(mapping.column)}"
    return title


def _figure_size(shape: tuple[int, int], mapping: ColorMapping | None) -> tuple[float, float]:
    """Inches for the thumbnail at about 150 dpi, plus room for the axis labels and the key."""
    h, w = shape
    key = 1.4 if mapping is not None else 0.0
    return max(3.0, w / 150 + 0.8 + key), max(2.5, h / 150 + 0.9)


def add_key(fig, ax, mapping: ColorMapping | None) -> None:
    """A legend (labels) or a titled colorbar (numbers) beside the axes."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch

    if mapping is None:
        return
    if mapping.kind == "categorical":
        handles = [
            Patch(facecolor=c, edgecolor="0.2", label=name)
            for name, c in mapping.categories.items()
        ]
        ax.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            fontsize=6,
            title=column_title(mapping.column),
            title_fontsize=7,
            frameon=False,
        )
        return
    sm = ScalarMappable(Normalize(*mapping.limits), mapping.colormap)
    bar = fig.colorbar(sm, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label(column_title(mapping.column), fontsize=7)
    bar.ax.tick_params(labelsize=6)


def fit_to_content(fig, pad: float = 0.06, rounds: int = 3):
    """Shrinks a constrained-layout figure to what it draws (an image of fixed aspect leaves
    empty bands otherwise), so every margin is about ``pad`` inches."""
    for _ in range(rounds):
        fig.canvas.draw()
        used = fig.get_tightbbox(fig.canvas.get_renderer())
        width, height = fig.get_size_inches()
        spare_w = width - used.width - 2 * pad
        spare_h = height - used.height - 2 * pad
        if spare_w < 0.02 and spare_h < 0.02:
            break
        fig.set_size_inches(width - max(spare_w, 0.0), height - max(spare_h, 0.0))
    return fig
