"""The plugin in a real napari viewer (run under Xvfb): manifest, readers, sample data, widget,
and where patch squares land on screen."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

napari = pytest.importorskip("napari")

from napari_pathviz._layers import META_COLOR_BY, META_SLIDE  # noqa: E402
from napari_pathviz._widgets.loader import SlideLoaderWidget  # noqa: E402
from napari_pathviz.patches import PatchTable  # noqa: E402

PLUGIN = "napari-pathviz"


def test_manifest_validates():
    exe = os.path.join(os.path.dirname(sys.executable), "npe2")
    result = subprocess.run([exe, "validate", PLUGIN], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_widgets_are_in_the_plugins_menu(make_napari_viewer):
    from napari._app_model import get_app_model

    viewer = make_napari_viewer()
    menus = get_app_model().menus
    submenus = {getattr(i, "submenu", None) for i in menus.get_menu("napari/plugins")}
    assert f"napari/plugins/{PLUGIN}" in submenus
    commands = {i.command.id for i in menus.get_menu(f"napari/plugins/{PLUGIN}")}
    assert commands == {
        f"{PLUGIN}.slide_loader",
        f"{PLUGIN}.embedding_explorer",
        f"{PLUGIN}.model_inference",
        f"{PLUGIN}.attributions",
        f"{PLUGIN}.cohort_explorer",
        f"{PLUGIN}.qupath_annotations",
        f"{PLUGIN}.workbench",
    }
    # The QuPath widget opens from its menu entry's name.
    from napari_pathviz._widgets._qupath import QuPathWidget

    _dock, qupath = viewer.window.add_plugin_dock_widget(PLUGIN, "QuPath annotations")
    assert isinstance(qupath, QuPathWidget)


def test_reader_opens_a_tiff_as_one_multiscale_rgb_layer(make_napari_viewer, svs_file):
    viewer = make_napari_viewer()
    layers = viewer.open(svs_file, plugin=PLUGIN)
    assert len(layers) == 1
    layer = layers[0]
    assert layer.rgb and layer.multiscale and len(layer.data) == 3
    assert layer.data[0].shape == (1000, 1400, 3)
    assert layer.metadata[META_SLIDE].mpp == pytest.approx(0.499)


def test_reader_opens_ome_zarr_and_pathflowai_zarr(
    make_napari_viewer, ome_zarr, pathflowai_project
):
    viewer = make_napari_viewer()
    ome = viewer.open(ome_zarr, plugin=PLUGIN)[0]
    pfa = viewer.open(pathflowai_project["zarr"], plugin=PLUGIN)[0]
    assert ome.rgb and ome.multiscale and ome.data[0].shape == (1000, 1400, 3)
    assert pfa.rgb and pfa.data[0].shape == (1000, 1400, 3)  # (x, y, C) shown as (y, x, C)
    np.testing.assert_array_equal(
        np.asarray(pfa.data[0][:50, :60]), pathflowai_project["image"][:50, :60]
    )
    assert len(viewer.layers) == 2


def test_reader_gives_one_points_layer_per_patch_size(make_napari_viewer, pathflowai_project):
    viewer = make_napari_viewer()
    layers = viewer.open(pathflowai_project["db"], plugin=PLUGIN)
    assert [ly.name for ly in layers] == ["patch_info.db [128]", "patch_info.db [256]"]
    rows = pathflowai_project["rows"]
    for layer, size in zip(layers, (128, 256), strict=True):
        expected = rows[rows["patch_size"] == size]
        assert len(layer.data) == len(expected)
        assert set(layer.features.columns) >= {
            "ID",
            "x",
            "y",
            "patch_size",
            "annotation",
            "tumor",
            "stroma",
        }
        np.testing.assert_allclose(layer.size, size)
        np.testing.assert_allclose(layer.data[:, 0], layer.features["y"] + (size - 1) / 2)
        np.testing.assert_allclose(layer.data[:, 1], layer.features["x"] + (size - 1) / 2)


def test_reader_reports_bad_files_as_notifications(make_napari_viewer, tmp_path, notifications):
    viewer = make_napari_viewer()
    (tmp_path / "bad.csv").write_text("x,y,patch_size\n1,2,3\nfoo,2,3\n")
    (tmp_path / "broken.zarr").mkdir()
    assert viewer.open(tmp_path / "bad.csv", plugin=PLUGIN) == []
    assert viewer.open(tmp_path / "broken.zarr", plugin=PLUGIN) == []
    assert len(viewer.layers) == 0
    assert any("bad.csv: row 1: x is not a number" in m for m in notifications)
    assert any("broken.zarr: not a readable zarr store" in m for m in notifications)


def test_sample_data(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "demo")
    image, points = viewer.layers
    slide = image.metadata["pathviz_slide"]
    assert image.rgb and image.multiscale
    assert image.data[0].shape == (slide.height, slide.width, 3) and slide.width > 1000
    assert points.symbol[0].value == "square"
    assert {"annotation", "dab_positive", "prob_dab_positive", "y_pred"} <= set(
        points.features.columns
    )
    assert points.metadata[META_COLOR_BY] == "annotation"
    # The demo embeddings, for the explorer to run (tests/test_patches_in_use_widget.py).
    embeddings = Path(points.metadata["pathviz_embeddings"])
    assert embeddings.name == "embeddings.parquet" and embeddings.stat().st_size > 10_000


def test_widget_opens_slide_loads_patches_and_recolours(
    make_napari_viewer, pathflowai_project, notifications
):
    viewer = make_napari_viewer()
    widget = SlideLoaderWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.slide_path.value = str(pathflowai_project["zarr"])
    widget.use_mpp.value = True
    widget.open_slide_button.clicked.emit()
    assert len(viewer.layers) == 1 and viewer.layers[0].data[0].shape == (1000, 1400, 3)

    widget.table_path.value = str(pathflowai_project["db"])
    widget.patch_size.value = 256
    widget.load_table_button.clicked.emit()
    points = viewer.layers[-1]
    # The slide's own rows only: the database also holds another slide.
    assert set(points.features["ID"]) == {"case01"}
    assert points.metadata[META_COLOR_BY] == "annotation"
    assert "tumor" in widget.color_by.choices

    before = points.face_color.copy()
    widget.color_by.value = "tumor"
    assert points.metadata[META_COLOR_BY] == "tumor"
    assert not np.allclose(before, points.face_color)
    tumor = points.features["tumor"].to_numpy()
    # Continuous colours follow the value: the most tumour-covered patch differs from the least.
    assert not np.allclose(points.face_color[tumor.argmax()], points.face_color[tumor.argmin()])

    widget.table_path.value = str(pathflowai_project["db"])
    widget.patch_size.value = 999
    widget.load_table_button.clicked.emit()  # bad input: a notification, no traceback
    assert any("no table for patch size 999" in m for m in notifications)
    assert "no table for patch size 999" in widget.status.value
    assert len(viewer.layers) == 2  # nothing lost


def test_widget_tissue_grid_runs_off_the_gui_thread(make_napari_viewer, qtbot, ome_zarr):
    viewer = make_napari_viewer()
    widget = SlideLoaderWidget(viewer)
    widget.slide_path.value = str(ome_zarr)
    widget.open_slide_button.clicked.emit()
    widget.grid_size.value = 128
    widget.min_tissue.value = 0.3
    widget.grid_button.clicked.emit()
    assert widget._worker is not None
    qtbot.waitUntil(lambda: len(viewer.layers) == 2, timeout=60_000)
    grid = viewer.layers[-1]
    assert grid.name == "slide tissue grid" and (grid.features["tissue"] >= 0.3).all()
    assert grid.metadata[META_COLOR_BY] == "tissue"


def test_widget_reports_missing_slide(make_napari_viewer, notifications):
    viewer = make_napari_viewer()
    widget = SlideLoaderWidget(viewer)
    widget.slide_path.value = "/no/such/slide.svs"
    widget.open_slide_button.clicked.emit()
    widget.grid_button.clicked.emit()
    assert any("slide.svs: no such file or directory" in m for m in notifications)
    assert any("Tissue grid: open a slide first" in m for m in notifications)
    assert len(viewer.layers) == 0


def _bright_box(image: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(image[..., :3].max(axis=2).max(axis=1) > 128)
    cols = np.flatnonzero(image[..., :3].max(axis=2).max(axis=0) > 128)
    return rows[0], rows[-1], cols[0], cols[-1]


def test_patch_square_covers_exactly_its_pixels_on_screen(make_napari_viewer):
    """Rendered check of the pixel-centre convention: a square for the patch at (16, 24) of
    size 32 covers on screen exactly what the image pixels [16, 48) x [24, 56) cover."""
    from napari_pathviz._layers import patches_layer_data

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(800, 800)
    image = np.zeros((80, 80), np.uint8)
    image[16:48, 24:56] = 255
    pixels = viewer.add_image(image, contrast_limits=(0, 255), interpolation2d="nearest")
    table = PatchTable.from_frame(pd.DataFrame({"x": [24], "y": [16], "patch_size": [32]}))
    data, kwargs, _ = patches_layer_data(table)
    kwargs.update(face_color="white", border_width=0, opacity=1.0)
    square = viewer.add_points(data, **kwargs)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = (40, 40)
    camera.zoom = 6

    square.visible = False
    image_box = _bright_box(viewer.screenshot(canvas_only=True, flash=False))
    square.visible, pixels.visible = True, False
    square_box = _bright_box(viewer.screenshot(canvas_only=True, flash=False))
    assert image_box[1] - image_box[0] > 150  # 32 pixels at zoom 6
    # Within two screen pixels (a third of a slide pixel); a half-pixel shift would be 3.
    np.testing.assert_allclose(square_box, image_box, atol=2)


def test_widget_tissue_grid_can_be_cancelled(make_napari_viewer, qtbot, ome_zarr):
    viewer = make_napari_viewer()
    widget = SlideLoaderWidget(viewer)
    widget.slide_path.value = str(ome_zarr)
    widget.open_slide_button.clicked.emit()
    widget.grid_button.clicked.emit()
    worker = widget._worker
    assert widget.cancel_button.enabled and not widget.grid_button.enabled
    widget.cancel_button.clicked.emit()
    assert widget.grid_button.enabled and not widget.cancel_button.enabled
    qtbot.waitUntil(lambda: not worker.is_running, timeout=60_000)
    qtbot.wait(200)
    assert len(viewer.layers) == 1  # the cancelled grid was not added
    assert widget.status.value == "tissue grid cancelled"


def test_reader_leaves_other_tables_to_other_readers(tmp_path):
    from napari_pathviz._reader import get_reader, read_patch_table

    (tmp_path / "measurements.csv").write_text("area,perimeter\n1,2\n")
    (tmp_path / "patches.csv").write_text("x,y,patch_size\n1,2,3\n")
    assert get_reader(str(tmp_path / "measurements.csv")) is None
    assert get_reader(str(tmp_path / "patches.csv")) is read_patch_table
    assert get_reader(str(tmp_path / "image.png")) is None
