"""One value per patch as an image: the patch grid as pixels, placed exactly over the slide."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .classes import default_heatmap_column
from .errors import PathvizError
from .patches import PatchTable


@dataclass
class PatchGrid:
    """``image[i, j]`` is the value of the patch whose top-left is
    (origin_y + i * stride, origin_x + j * stride); NaN where there is no patch."""

    image: np.ndarray
    stride: int
    origin: tuple[int, int]
    patch_size: int

    @property
    def scale(self) -> tuple[float, float]:
        return (float(self.stride), float(self.stride))

    @property
    def translate(self) -> tuple[float, float]:
        """napari translate: grid pixel (i, j)'s centre on the centre of its patch. Pixel
        centres sit at integer world coordinates, so a P-pixel patch at y0 is centred on
        y0 + (P - 1) / 2; with overlapping patches (stride < P) each cell is stride wide."""
        half = (self.patch_size - 1) / 2
        return (self.origin[0] + half, self.origin[1] + half)


def default_column(columns, class_names=None) -> str | None:
    """The column a heatmap shows unless told: the explained class's probability
    (``prob_<last class>``, by name when the class names are known), never merely the first."""
    return default_heatmap_column(columns, class_names)


def patch_value_grid(table: PatchTable, column: str | None = None, class_names=None) -> PatchGrid:
    """The values of ``column`` (default: :func:`default_column`) laid out on the patches'
    grid (one patch size, regular stride)."""
    df = table.df
    if column is None:
        column = default_column(df.columns, class_names)
        if column is None:
            raise PathvizError(f"heatmap: {table.source} has no prob_* column; name a column")
    if column not in df.columns:
        raise PathvizError(f"heatmap: no column {column!r}")
    sizes = np.unique(df["patch_size"])
    if len(sizes) != 1:
        raise PathvizError(
            f"heatmap: patches of several sizes ({', '.join(map(str, sizes))}); "
            "show one size at a time"
        )
    x, y = df["x"].to_numpy(np.int64), df["y"].to_numpy(np.int64)
    stride = int(sizes[0])
    for coord in (x, y):
        steps = np.diff(np.unique(coord))
        if len(steps):
            stride = int(np.gcd.reduce(np.append(steps, stride)))
    origin = (int(y.min() % stride), int(x.min() % stride))
    rows, cols = (y - origin[0]) // stride, (x - origin[1]) // stride
    image = np.full((rows.max() + 1, cols.max() + 1), np.nan, np.float32)
    image[rows, cols] = np.asarray(df[column], np.float32)
    return PatchGrid(image, stride, origin, int(sizes[0]))
