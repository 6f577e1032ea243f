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
    # Constrained layout keeps every title, label and the colorbar inside the figure.
    fig = Figure(figsize=(1.3 * slots + 1.2, 1.6 * lines + 0.5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    cmap = red_blue_colormap()
    limit = shared_limit(maps)
    probabilities = label_probabilities(result, label_output)
    grid = fig.add_gridspec(lines, slots)
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
    bar = fig.colorbar(
        ScalarMappable(Normalize(-limit, limit), cmap), ax=fig.axes, fraction=0.03, pad=0.01
    )
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
    """No ticks, and a thin grey frame, so a patch of pale glass still shows on white."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor("0.45")
        spine.set_linewidth(0.8)


def distinct_rows(
    df, ranked, count: int, image_of=None, min_difference: float = 3.0, spacing: float = 1.0
):
    """The first ``count`` rows of ``ranked`` (row positions, best first) that show different
    tissue: a row is skipped when its patch lies within ``spacing`` patch sizes of an earlier
    pick of the same slide (overlapping or neighbouring tiles: 0 skips overlaps only), or,
    given ``image_of`` (row -> (H, W, 3) image), when its image equals an earlier pick's
    flipped or turned (mean |difference| of 4x4-pixel block means below ``min_difference``
    grey levels). A gallery of mirror images or neighbouring tiles explains one thing twice."""
    ids = df["ID"].astype(str).to_numpy() if "ID" in df.columns else np.zeros(len(df), str)
    x, y = df["x"].to_numpy(), df["y"].to_numpy()
    size = df["patch_size"].to_numpy()
    picked: list[int] = []
    looks: list[np.ndarray] = []
    for row in ranked:
        if len(picked) == count:
            break
        others = np.asarray(picked, dtype=int)
        reach = np.maximum(size[others], size[row]) * (1.0 + spacing)
        overlaps = (
            (ids[others] == ids[row])
            & (np.abs(x[others] - x[row]) < reach)
            & (np.abs(y[others] - y[row]) < reach)
        )
        if overlaps.any():
            continue
        if image_of is not None:
            look = _blocks(image_of(row))
            if any(_closest_view(look, seen) < min_difference for seen in looks):
                continue
            looks.append(look)
        picked.append(int(row))
    return np.asarray(picked, dtype=int)


def _blocks(image: np.ndarray, block: int = 4) -> np.ndarray:
    h, w = (s - s % block for s in image.shape[:2])
    rgb = np.asarray(image[:h, :w, :3], np.float32)
    return rgb.reshape(h // block, block, w // block, block, 3).mean(axis=(1, 3))


def _closest_view(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest mean |a - view of b| over the 8 flips/rotations of b (same shape only)."""
    best = np.inf
    for turns in range(4):
        turned = np.rot90(b, turns)
        for view in (turned, turned[:, ::-1]):
            if view.shape == a.shape:
                best = min(best, float(np.abs(a - view).mean()))
    return best
