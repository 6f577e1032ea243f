"""Static figures as a reader gets them: every label inside the figure, axes in µm or px, tight
margins, a title and a key, framed thumbnails, class names in titles, distinct gallery patches.
Each test draws a real matplotlib figure of the demo slide and measures it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr

from napari_pathviz.attribution.gallery import distinct_rows, gallery_figure
from napari_pathviz.mosaic import mosaic_figure, umap_mosaic
from napari_pathviz.patches import PatchTable
from napari_pathviz.render import slide_patches_figure
from napari_pathviz.slide import open_slide


@pytest.fixture(scope="module")
def demo():
    from napari_pathviz._demo import load_demo

    return load_demo()


def _texts(fig):
    """Every visible, non-empty text of the figure: tick labels, axis labels, titles, legends."""
    for text in fig.findobj(lambda a: hasattr(a, "get_text") and hasattr(a, "get_window_extent")):
        if text.get_visible() and str(text.get_text()).strip():
            yield text


def _drawn_tick_labels(ax):
    """The tick labels matplotlib draws: those of ticks inside the axis' view interval."""
    for axis in (ax.xaxis, ax.yaxis):
        lo, hi = sorted(axis.get_view_interval())
        slack = 1e-9 * max(1.0, abs(hi - lo))
        for loc, label in zip(axis.get_majorticklocs(), axis.get_majorticklabels(), strict=True):
            if lo - slack <= loc <= hi + slack and label.get_visible() and label.get_text():
                yield label


def assert_readable(fig, max_margin_in: float = 0.2) -> None:
    """Every drawn text (tick labels, axis labels, titles, legend) lies inside the figure, and
    the drawing fills it to within max_margin_in inches on each side: no clipped tick labels,
    no wasted border."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    tick_labels = [label for ax in fig.axes for label in _drawn_tick_labels(ax)]
    all_ticks = {id(t) for ax in fig.axes for t in [*ax.get_xticklabels(), *ax.get_yticklabels()]}
    others = [t for t in _texts(fig) if id(t) not in all_ticks]
    for text in [*tick_labels, *others]:
        extent = text.get_window_extent(renderer)
        inside = (
            extent.x0 >= box.x0 - 0.5
            and extent.x1 <= box.x1 + 0.5
            and extent.y0 >= box.y0 - 0.5
            and extent.y1 <= box.y1 + 0.5
        )
        assert inside, (text.get_text(), extent, box)
    assert tick_labels or not any(ax.get_xticks().size for ax in fig.axes)
    used = fig.get_tightbbox(renderer)  # inches
    width, height = fig.get_size_inches()
    margins = (used.x0, used.y0, width - used.x1, height - used.y1)
    assert max(margins) <= max_margin_in, margins


def _key(fig):
    """The figure's legend title or colorbar label (its key), or None."""
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None:
            return legend.get_title().get_text(), [t.get_text() for t in legend.get_texts()]
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            return ax.get_ylabel() or ax.get_xlabel(), []
    return None


def test_slide_figure_by_annotation_has_um_axes_and_a_legend(demo):
    slide, table = demo
    fig = slide_patches_figure(slide, table, color_by="annotation")
    assert_readable(fig)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x (µm)", "y (µm)")
    # The axes span the slide in µm: 0.5 µm a pixel.
    assert ax.get_xlim()[1] == pytest.approx(slide.width * 0.5, abs=1)
    assert ax.get_title() == f"demo_ihc: {len(table)} patches, coloured by annotation"
    title, names = _key(fig)
    assert title == "annotation" and names == ["background", "dab_negative", "dab_positive"]


def test_slide_figure_by_probability_names_the_class(demo):
    slide, table = demo
    fig = slide_patches_figure(slide, table, color_by="prob_dab_positive")
    assert_readable(fig)
    assert fig.axes[0].get_title().endswith("coloured by probability of dab_positive")
    assert _key(fig) == ("probability of dab_positive", [])


def test_slide_figure_without_pixel_size_is_in_px(tmp_path):
    image = np.full((300, 500, 3), 235, np.uint8)
    image[100:200, 100:300] = (150, 90, 60)
    zarr.create_array(str(tmp_path / "plain.zarr"), data=image, chunks=(128, 128, 3))
    slide = open_slide(tmp_path / "plain.zarr")
    assert not slide.mpp
    table = PatchTable.from_frame(
        pd.DataFrame({"x": [100, 200], "y": [100, 100], "patch_size": 100, "label": ["a", "b"]})
    )
    fig = slide_patches_figure(slide, table, color_by="label")
    assert_readable(fig)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x (px)", "y (px)")
    assert ax.get_xlim()[1] == pytest.approx(499.5)


def test_mosaic_has_framed_thumbnails_a_title_and_a_key(demo):
    slide, table = demo
    rng = np.random.default_rng(0)
    coords = rng.normal(size=(len(table), 2))
    mosaic = umap_mosaic(
        {slide.slide_id: slide},
        table,
        coords,
        zoom=0.5,
        canvas=768,
        border=2,
        color_by="annotation",
    )
    # Every thumbnail's outer ring is its class colour, never the white canvas: a patch of
    # glass shows as a framed square.
    last = mosaic.order[-1]  # drawn on top: its frame is whole
    r, c = mosaic.origins[last]
    frame = mosaic.image[r, c : c + mosaic.thumb]
    expected = (mosaic.colours.rgba[last, :3] * 255).round()
    np.testing.assert_array_equal(frame, np.broadcast_to(expected, frame.shape))
    assert (frame < 250).any(axis=1).all()
    fig = mosaic_figure(mosaic)
    assert_readable(fig)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("UMAP 1", "UMAP 2")
    assert ax.get_title().startswith(f"Patches at their UMAP positions ({len(table)} patches)")
    # The axes read in UMAP units: the extremes of the coordinates lie inside them.
    assert ax.get_xlim()[0] < coords[:, 0].min() and ax.get_xlim()[1] > coords[:, 0].max()
    assert _key(fig)[0] == "annotation"


def test_mosaic_without_border_keeps_the_raw_canvas(demo):
    slide, table = demo
    coords = np.random.default_rng(1).normal(size=(len(table), 2))
    plain = umap_mosaic({slide.slide_id: slide}, table, coords, zoom=0.5, canvas=512)
    framed = umap_mosaic({slide.slide_id: slide}, table, coords, zoom=0.5, canvas=512, border=1)
    assert plain.colours is None and framed.colours is None
    changed = (plain.image != framed.image).any(axis=2)
    assert 0 < changed.mean() < 0.5  # only the frames differ
    assert (framed.image[changed] == 90).all()  # dark grey frames without a colour column


@pytest.fixture(scope="module")
def explained(demo):
    """Grad-CAM of the 4 most DAB-positive distinct demo patches, with the demo's class names."""
    from napari_pathviz._demo import ANNOTATIONS
    from napari_pathviz._demo_model import load_demo_model, read_patches, to_model_input
    from napari_pathviz.attribution import attribute

    slide, table = demo
    df = table.df
    ranked = np.argsort(-df["dab_positive"].to_numpy(), kind="stable")
    rows = distinct_rows(df, ranked, 4)
    images = read_patches(slide, PatchTable(df.iloc[rows], table.source))
    result = attribute(load_demo_model(), to_model_input(images), "gradcam")
    return images, result, list(ANNOTATIONS), df.iloc[rows]


def test_gallery_is_readable_framed_and_names_classes(explained):
    images, result, names, rows = explained
    titles = [f"x={x} y={y}" for x, y in zip(rows["x"], rows["y"], strict=True)]
    fig = gallery_figure(images, result, class_names=names, titles=titles)
    assert_readable(fig)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 8  # image + map per patch
    map_titles = [ax.get_title() for ax in panels[1::2]]
    assert all(t.split(":")[0] in names for t in map_titles), map_titles
    assert all(t.startswith("dab_positive: p=") for t in map_titles)  # the model agrees
    for ax in panels:  # a visible grey frame around every thumbnail
        spine = ax.spines["left"]
        assert spine.get_visible() and spine.get_linewidth() > 0
        assert max(spine.get_edgecolor()[:3]) < 0.8
    assert _key(fig)[0] == "gradcam attribution"


def test_distinct_rows_skip_overlapping_and_mirrored_patches(demo):
    from napari_pathviz._demo_model import read_patches

    slide, table = demo
    df = table.df
    ranked = np.argsort(-df["dab_positive"].to_numpy(), kind="stable")
    rows = distinct_rows(df, ranked, 8)
    assert len(rows) == 8 and len(set(rows)) == 8
    picked = df.iloc[rows]
    gaps = np.maximum(
        np.abs(picked["x"].to_numpy()[:, None] - picked["x"].to_numpy()[None]),
        np.abs(picked["y"].to_numpy()[:, None] - picked["y"].to_numpy()[None]),
    )
    np.fill_diagonal(gaps, 10**6)
    assert gaps.min() >= 128  # no two picks overlap or touch: a tile at least between them

    # A half-overlapping tile (stride 32) of the best patch is skipped for the next one.
    best = df.iloc[ranked[0]]
    shifted = best.copy()
    shifted["x"] = best["x"] + 32
    both = pd.concat([df.iloc[[ranked[0]]], shifted.to_frame().T, df.iloc[[ranked[1]]]])
    both = both.reset_index(drop=True)
    assert distinct_rows(both, [0, 1, 2], 2, spacing=0).tolist() == [0, 2]

    # A mirrored copy elsewhere on the slide is skipped when images are compared.
    images = read_patches(slide, PatchTable(df.iloc[ranked[:2]], table.source))
    mirrored = [images[0], images[0][:, ::-1].copy(), images[1]]
    far = pd.DataFrame({"ID": "demo_ihc", "x": [0, 640, 1280], "y": [0, 0, 0], "patch_size": 64})
    assert distinct_rows(far, [0, 1, 2], 2, image_of=lambda i: mirrored[i]).tolist() == [0, 2]
    assert distinct_rows(far, [0, 1, 2], 2).tolist() == [0, 1]  # positions alone cannot tell


@pytest.mark.parametrize("components", [2, 3])
def test_embedding_html_names_its_axes_title_and_key(tmp_path, components):
    import re

    from napari_pathviz.embedding_plot import plot_embeddings_html

    df = pd.DataFrame(
        {"ID": "s", "x": np.arange(6) * 64, "y": 0, "patch_size": 64, "p": np.linspace(0, 1, 6)}
    )
    coords = np.random.default_rng(0).normal(size=(6, components))
    html = plot_embeddings_html(df, coords, tmp_path / "u.html", ["p"]).read_text()

    def titled(text: str) -> bool:  # an axis or colorbar title in the plot's layout JSON
        return re.search(r'"title":\s*\{\s*"text":\s*"' + re.escape(text) + '"', html) is not None

    assert all(titled(f"UMAP {k}") for k in range(1, components + 1))
    assert titled("UMAP 3") == (components == 3)
    assert titled("p") and "coloured by p" in html  # the colorbar's title, and the plot's
