"""Tissue detection and grid, colour mapping, and the headless figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr

from napari_pathviz.errors import PathvizError
from napari_pathviz.patches import PatchTable
from napari_pathviz.render import column_colors, render_slide_with_patches
from napari_pathviz.slide import open_slide
from napari_pathviz.tissue import tissue_grid


@pytest.fixture
def glass_with_tissue(tmp_path, tissue_rgb):
    """Glass (grey-white, slightly noisy) with real tissue pasted in one known rectangle."""
    rng = np.random.default_rng(1)
    image = np.clip(rng.normal(238, 2, size=(2048, 3072, 3)), 0, 255).astype(np.uint8)
    image[512:1512, 1024:2424] = tissue_rgb
    zarr.create_array(str(tmp_path / "glass.zarr"), data=image, chunks=(512, 512, 3))
    return open_slide(tmp_path / "glass.zarr")


def test_grid_keeps_tissue_and_skips_glass(glass_with_tissue):
    table = tissue_grid(glass_with_tissue, 128, min_tissue=0.5)
    df = table.df
    assert set(df.columns) >= {"ID", "x", "y", "patch_size", "tissue"}
    assert (df["patch_size"] == 128).all() and (df["ID"] == "glass").all()
    inside = (
        (df["y"] >= 512) & (df["y"] + 128 <= 1512) & (df["x"] >= 1024) & (df["x"] + 128 <= 2424)
    )
    outside = (
        (df["y"] + 128 <= 512) | (df["y"] >= 1512) | (df["x"] + 128 <= 1024) | (df["x"] >= 2424)
    )
    assert not outside.any(), "a patch of bare glass was kept"
    n_inside = 7 * 10  # whole 128-px cells in the 1000 x 1400 tissue rectangle
    # The real image has white lumen inside it: most, not all, tissue cells are kept.
    assert 0.6 * n_inside <= inside.sum() <= n_inside
    assert ((df["x"] % 128 == 0) & (df["y"] % 128 == 0)).all()


def test_grid_stride_and_no_threshold(glass_with_tissue):
    every = tissue_grid(glass_with_tissue, 256, stride=128, min_tissue=0.0)
    assert len(every) == ((2048 - 256) // 128 + 1) * ((3072 - 256) // 128 + 1)
    assert every.df["tissue"].between(0, 1).all()


def test_grid_bad_parameters(glass_with_tissue):
    with pytest.raises(PathvizError, match="--patch-size must be positive"):
        tissue_grid(glass_with_tissue, 0)
    with pytest.raises(PathvizError, match="--min-tissue must be between 0 and 1, got 2"):
        tissue_grid(glass_with_tissue, 64, min_tissue=2)
    with pytest.raises(PathvizError, match=r"patch size 5000 is larger than the slide"):
        tissue_grid(glass_with_tissue, 5000)


def test_categorical_and_continuous_colours():
    df = pd.DataFrame(
        {"annotation": ["b", "a", "b", "c"], "p": [0.0, 0.5, 1.0, np.nan], "fold": [0, 1, 0, 1]}
    )
    cat = column_colors(df, "annotation")
    assert cat.kind == "categorical" and list(cat.categories) == ["a", "b", "c"]
    np.testing.assert_array_equal(cat.rgba[0], cat.rgba[2])
    assert not np.array_equal(cat.rgba[0], cat.rgba[1])
    cont = column_colors(df, "p")
    assert cont.kind == "continuous" and cont.limits == (0.0, 1.0)
    np.testing.assert_allclose(cont.rgba[3], (0.5, 0.5, 0.5, 1.0))  # NaN is grey
    many = pd.DataFrame({"count": np.arange(10, 40)})  # many integer values: a measurement
    assert column_colors(many, "count").kind == "continuous"
    assert column_colors(many, "count").limits == (10.0, 39.0)
    assert column_colors(df, "fold").kind == "categorical"  # few integer values: labels
    with pytest.raises(PathvizError, match="colour column 'nope' is not in the table"):
        column_colors(df, "nope")


def test_render_png_shows_patch_colours_in_place(tmp_path, glass_with_tissue):
    from PIL import Image

    table = PatchTable.from_frame(
        pd.DataFrame({"x": [1024], "y": [512], "patch_size": [512], "label": ["only"]})
    )
    out = render_slide_with_patches(
        glass_with_tissue, table, tmp_path / "fig.png", color_by="label", alpha=1.0
    )
    image = np.asarray(Image.open(out).convert("RGB"))
    tab_blue = np.array([31, 119, 180])  # first tab10 colour, opaque: the patch is fully painted
    assert (np.abs(image.astype(int) - tab_blue).sum(axis=2) < 6).sum() > 500
