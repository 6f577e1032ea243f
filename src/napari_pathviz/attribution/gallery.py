"""A gallery figure of attributions, like shap.image_plot: each patch, its red/blue overlay on
one symmetric scale shared by all patches, the explained class and its probability, and one
colorbar. Red: the pixels pushed the explained output up; blue: down."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

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


def render_gallery(
    patches: np.ndarray,
    result: AttributionResult,
    out: str | os.PathLike,
    *,
    class_names: list[str] | None = None,
    titles: list[str] | None = None,
    per_patch_scale: bool = False,
    columns: int = 4,
) -> Path:
    """Writes the gallery PNG; ``patches`` are the (N, H, W, 3) uint8 images explained."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = len(result.maps)
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    fig = Figure(figsize=(2.6 * columns * 2 / 2 + 1.2, 2.4 * rows), dpi=120)
    FigureCanvasAgg(fig)
    cmap = red_blue_colormap()
    limit = shared_limit(result.maps)
    grid = fig.add_gridspec(
        rows, columns * 2, left=0.02, right=0.88, top=0.9, bottom=0.03, wspace=0.05, hspace=0.35
    )
    for i in range(n):
        r, c = divmod(i, columns)
        ax_img = fig.add_subplot(grid[r, 2 * c])
        ax_map = fig.add_subplot(grid[r, 2 * c + 1])
        image = patches[i][..., :3]
        gray = image.mean(axis=2)
        m = result.maps[i]
        if m.shape != gray.shape:
            from skimage.transform import resize

            m = resize(m, gray.shape, order=1)
        lim = shared_limit(m[None]) if per_patch_scale else limit
        ax_img.imshow(image)
        ax_map.imshow(gray, cmap="gray", alpha=0.35)
        ax_map.imshow(m, cmap=cmap, vmin=-lim, vmax=lim)
        target = int(result.targets[i])
        name = class_names[target] if class_names and target < len(class_names) else str(target)
        probability = (
            float(result.probabilities[i, target])
            if result.probabilities.shape[1] > 1
            else float(result.probabilities[i, 0])
        )
        label = titles[i] if titles else f"patch {i}"
        ax_img.set_title(label, fontsize=6)
        ax_map.set_title(f"{name}: p={probability:.2f}", fontsize=6)
        for ax in (ax_img, ax_map):
            ax.set_xticks([])
            ax.set_yticks([])
    cax = fig.add_axes((0.9, 0.15, 0.02, 0.7))
    bar = fig.colorbar(ScalarMappable(Normalize(-limit, limit), cmap), cax=cax)
    bar.set_label(
        f"{result.method} attribution" + (" (per-patch scale)" if per_patch_scale else ""),
        fontsize=7,
    )
    bar.ax.tick_params(labelsize=6)
    fig.suptitle(f"{result.method}: red raises, blue lowers the explained output", fontsize=8)
    fig.savefig(out)
    return out
