"""A gallery figure of attributions, like shap.image_plot: each patch, its red/blue overlay on
one symmetric scale shared by all patches, the explained class and its probability, and one
colorbar. Red: the pixels pushed the explained output up; blue: down."""

from __future__ import annotations

import os

import numpy as np

from ..classes import class_label
from ..errors import PathvizError
from .result import AttributionResult


def shared_limit(maps: np.ndarray, percentile: float = 99.5) -> float:
    """One symmetric colour limit for all maps (a high percentile of |value|, so a few extreme
    pixels do not wash the rest out)."""
    values = np.abs(maps[np.isfinite(maps)])
    limit = float(np.percentile(values, percentile)) if values.size else 1.0
    return limit if limit > 0 else 1.0


def red_blue_colormap():
    """Diverging blue-white-red, transparent at zero (for overlays)."""
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list(
        "pathviz_red_blue",
        [(0.0, (0.0, 0.35, 0.9, 1.0)), (0.5, (1.0, 1.0, 1.0, 0.0)), (1.0, (0.9, 0.05, 0.1, 1.0))],
    )


def render_gallery(patches: np.ndarray, result: AttributionResult, out: str | os.PathLike, **kw):
    """Writes the gallery (see :func:`gallery_figure`) as a PNG."""
    from ..io.atomic import save_figure

    return save_figure(gallery_figure(patches, result, **kw), out)


def gallery_image(patches: np.ndarray, result: AttributionResult, **kw) -> np.ndarray:
    """The gallery as an (h, w, 4) uint8 RGBA image, for showing it in an application."""
    figure = gallery_figure(patches, result, **kw)
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba()).copy()


def gallery_figure(
    patches: np.ndarray,
    result: AttributionResult,
    *,
    class_names: list[str] | None = None,
    titles: list[str] | None = None,
    per_patch_scale: bool = False,
    columns: int = 4,
    label_output: str = "none",
):
    """A matplotlib Figure; ``patches`` are the (N, H, W, 3) uint8 images explained and
    ``titles`` one per patch. One row per explained class (target "each") puts each patch on a
    line of its own, its image then one overlay per class, as shap.image_plot does; otherwise
    the (patch, overlay) pairs fill ``columns`` pairs a line. Each map is labelled with its
    class and probability: the model's own (``label_output`` "none"), or its logits after
    "sigmoid" or "softmax" (PathFlowAI's -p)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    # The model's class names (which the widget records in the result), unless given.
    class_names = class_names or result.metadata.get("class_names")
    patch_of_row = result.patch_of_rows()
    maps = np.asarray(result.maps)
    explained = list(dict.fromkeys(patch_of_row.tolist()))  # patches, in first-row order
    rows_of = {p: np.flatnonzero(patch_of_row == p) for p in explained}
    per_line = max(len(r) for r in rows_of.values())
    if per_line > 1:  # every class of each patch: a line per patch
        lines, slots = len(explained), 1 + per_line
        places = [(i, 0) for i in range(len(explained))]
    else:
        pairs = max(1, min(columns, len(explained)))
        lines, slots = -(-len(explained) // pairs), 2 * pairs
        places = [(i // pairs, 2 * (i % pairs)) for i in range(len(explained))]
    fig = Figure(figsize=(1.3 * slots + 1.2, 2.4 * lines), dpi=120)
    FigureCanvasAgg(fig)
    cmap = red_blue_colormap()
    limit = shared_limit(maps)
    probabilities = label_probabilities(result, label_output)
    grid = fig.add_gridspec(
        lines, slots, left=0.02, right=0.88, top=0.9, bottom=0.03, wspace=0.05, hspace=0.35
    )
    for p, (line, slot) in zip(explained, places, strict=True):
        image = patches[p][..., :3]
        ax_img = fig.add_subplot(grid[line, slot])
        ax_img.imshow(image)
        ax_img.set_title(titles[p] if titles else f"patch {p}", fontsize=6)
        _no_ticks(ax_img)
        gray = image.mean(axis=2)
        for k, row in enumerate(rows_of[p]):
            ax_map = fig.add_subplot(grid[line, slot + 1 + k])
            m = maps[row]
            if m.shape != gray.shape:
                from skimage.transform import resize

                m = resize(m, gray.shape, order=1)
            lim = shared_limit(m[None]) if per_patch_scale else limit
            ax_map.imshow(gray, cmap="gray", alpha=0.35)
            ax_map.imshow(m, cmap=cmap, vmin=-lim, vmax=lim)
            target = int(result.targets[row])
            name = class_label(class_names, target)
            ax_map.set_title(
                f"{name}: p={_probability(probabilities, row, target):.2f}", fontsize=6
            )
            _no_ticks(ax_map)
    cax = fig.add_axes((0.9, 0.15, 0.02, 0.7))
    bar = fig.colorbar(ScalarMappable(Normalize(-limit, limit), cmap), cax=cax)
    bar.set_label(
        f"{result.method} attribution" + (" (per-patch scale)" if per_patch_scale else ""),
        fontsize=7,
    )
    bar.ax.tick_params(labelsize=6)
    fig.suptitle(f"{result.method}: red raises, blue lowers the explained output", fontsize=8)
    return fig


def label_probabilities(result: AttributionResult, label_output: str) -> np.ndarray:
    """(rows, classes) probabilities for the labels: the model's, or sigmoid/softmax of its
    logits."""
    if label_output == "none":
        return np.asarray(result.probabilities)
    from scipy.special import expit, softmax

    logits = np.asarray(result.logits, dtype=np.float64)
    if label_output == "sigmoid":
        return expit(logits)
    if label_output == "softmax":
        return softmax(logits, axis=1)
    raise PathvizError(f"-p must be none, sigmoid or softmax, got {label_output!r}")


def _probability(probabilities: np.ndarray, row: int, target: int) -> float:
    """The probability for the explained class (the only output of a one-output model)."""
    column = target if probabilities.shape[1] > 1 else 0
    return float(probabilities[row, column])


def _no_ticks(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
