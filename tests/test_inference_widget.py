"""Prediction heatmaps, the extract/plot-predictions commands, and the inference dock widget."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from napari_pathviz.errors import PathvizError
from napari_pathviz.heatmap import patch_value_grid
from napari_pathviz.patches import PatchTable

DEMO_WEIGHTS = str(resources.files("napari_pathviz") / "data" / "demo_model.pt")
DEMO_FACTORY = "napari_pathviz._demo_model:build_demo_model"
DEMO_NORM = ["--mean", "0.8", "0.72", "0.7", "--std", "0.15", "0.18", "0.18"]


def test_heatmap_grid_places_each_value_on_its_patch():
    df = pd.DataFrame(
        {"x": [64, 192, 64], "y": [32, 32, 96], "patch_size": 64, "p": [0.1, 0.9, 0.5]}
    )
    grid = patch_value_grid(PatchTable.from_frame(df), "p")
    assert grid.stride == 64 and grid.origin == (32, 0)
    np.testing.assert_allclose(
        grid.image, [[np.nan, 0.1, np.nan, 0.9], [np.nan, 0.5, np.nan, np.nan]]
    )
    # World centre of grid pixel (i, j) = translate + (i, j) * scale = the patch's centre.
    centre = np.asarray(grid.translate) + np.array([0, 1]) * grid.scale
    np.testing.assert_allclose(centre, (32 + 31.5, 64 + 31.5))
    overlapping = PatchTable.from_frame(
        pd.DataFrame({"x": [0, 32, 64], "y": [0, 0, 0], "patch_size": 64, "p": [1.0, 2.0, 3.0]})
    )
    grid = patch_value_grid(overlapping, "p")
    assert grid.stride == 32 and grid.translate == (31.5, 31.5)
    np.testing.assert_allclose(grid.image, [[1.0, 2.0, 3.0]])
    mixed = pd.DataFrame({"x": [0, 64], "y": [0, 0], "patch_size": [64, 128], "p": [1, 2]})
    with pytest.raises(PathvizError, match="several sizes"):
        patch_value_grid(PatchTable.from_frame(mixed), "p")


def test_extract_and_plot_predictions_end_to_end(tmp_path):
    from napari_pathviz._demo import ensure_demo_data, load_demo

    paths = ensure_demo_data()
    out = tmp_path / "pred.parquet"
    args = [
        "extract",
        "-m",
        DEMO_WEIGHTS,
        "--factory",
        DEMO_FACTORY,
        *DEMO_NORM,
        "--slide",
        paths["slide"],
        "--patches",
        paths["patches"],
        "-o",
        out,
        "--batch-size",
        "100",
    ]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    df = pd.read_parquet(out)
    _, table = load_demo()
    # The card beside the weights names the classes: prob_<class>, y_pred the class name.
    named = {"prob_background", "prob_dab_positive", "y_pred", "y_pred_index", "feat_63"}
    assert len(df) == len(table) and named <= set(df.columns)
    assert not {"prob_0", "prob_2"} & set(df.columns)
    np.testing.assert_allclose(df["prob_dab_positive"], table.df["prob_dab_positive"], atol=1e-3)
    assert (df["y_pred"].to_numpy() == table.df["y_pred"].to_numpy()).mean() > 0.99
    assert (tmp_path / "pred.parquet.store.zarr").exists()  # the resumable store

    png = tmp_path / "pred.png"
    result = run_cli("plot-predictions", "--slide", paths["slide"], "-p", out, "-o", png)
    assert result.returncode == 0, result.stderr
    assert png.stat().st_size > 50_000

    bare = _weights_without_card(tmp_path)
    bad = run_cli("extract", "-m", bare, "--slide", paths["slide"], "-o", out, "--overwrite")
    assert bad.returncode == 2
    assert "a state dict; give its architecture with --factory" in bad.stderr
    bad = run_cli(
        "plot-predictions", "--slide", paths["slide"], "-p", out, "--column", "nope", "-o", png,
        "--overwrite",
    )  # fmt: skip
    assert bad.returncode == 2 and "no column 'nope'" in bad.stderr


def test_level_for_a_target_resolution(svs_file, ome_zarr, tmp_path):
    import zarr

    from napari_pathviz.slide import open_slide

    slide = open_slide(ome_zarr)  # 0.5 um/px at level 0, levels 2x apart
    assert slide.level_for_mpp(0.5) == 0
    assert slide.level_for_mpp(1.0) == 1
    assert slide.level_for_mpp(1.5) == 1  # never coarser than asked
    assert open_slide(svs_file).level_for_mpp(2.0) == 2  # SVS levels 0.499, 0.998, 1.996
    zarr.create_array(str(tmp_path / "plain.zarr"), shape=(600, 600, 3), dtype="uint8")
    with pytest.raises(PathvizError, match="does not say its microns per pixel"):
        open_slide(tmp_path / "plain.zarr").level_for_mpp(1.0)


def test_extract_a_cohort_folder_with_a_broken_slide(tmp_path):
    """A folder of slides runs as a cohort on a dask LocalCluster: the good slide is done, the
    broken one is reported (exit 2: a partial failure is visible), and a rerun skips the
    finished slide."""
    import shutil

    from napari_pathviz._demo import ensure_demo_data

    cohort = tmp_path / "cohort"
    cohort.mkdir()
    shutil.copytree(ensure_demo_data()["slide"], cohort / "demo_ihc.ome.zarr")
    (cohort / "broken.svs").write_text("not a tiff")
    args = [
        "extract",
        "-m",
        DEMO_WEIGHTS,
        "--factory",
        DEMO_FACTORY,
        *DEMO_NORM,
        "--slide",
        cohort,
        "--patch-size",
        "64",
        "--min-tissue",
        "0.3",
        "-o",
        tmp_path / "out",
        "--no-embeddings",
    ]
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    summary = pd.read_csv(tmp_path / "out" / "summary.csv").set_index("ID")
    assert summary.loc["demo_ihc", "status"] == "done"
    assert summary.loc["broken", "status"] == "failed"
    assert "broken.svs: not a readable TIFF" in summary.loc["broken", "error"]
    assert "pathviz extract: failed: " in result.stderr and "broken.svs" in result.stderr
    predictions = pd.read_parquet(tmp_path / "out" / summary.loc["demo_ihc", "output"])
    assert len(predictions) == summary.loc["demo_ihc", "patches"] > 0
    again = run_cli(*args)
    assert again.returncode == 2, again.stderr  # the broken slide still fails
    summary = pd.read_csv(tmp_path / "out" / "summary.csv").set_index("ID")
    assert summary.loc["demo_ihc", "status"] == "skipped"


napari = pytest.importorskip("napari")


def test_widget_runs_the_model_and_shows_a_heatmap(make_napari_viewer, qtbot):
    from napari_pathviz._widgets.inference import HEATMAP_SUFFIX, InferenceWidget

    viewer = make_napari_viewer()
    viewer.open_sample("napari-pathviz", "demo")
    patches = viewer.layers[-1]
    widget = InferenceWidget(viewer)
    # The demo's predictions are there already: the heatmap offers the explained class first.
    assert widget.heatmap_column.value == "prob_dab_positive"
    before = patches.features.copy()
    widget.model_path.value = DEMO_WEIGHTS
    widget.factory.value = DEMO_FACTORY
    widget.mean.value, widget.std.value = "0.8 0.72 0.7", "0.15 0.18 0.18"
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    assert widget.status.value == f"predictions for {len(patches.data)} patches"
    features = patches.features
    # The card's class names: the same columns replaced, no prob_0..2 beside them, and
    # y_pred still the class names (not floats).
    probs = [c for c in features.columns if c.startswith("prob_")]
    assert probs == ["prob_background", "prob_dab_negative", "prob_dab_positive"]
    assert list(features.columns).count("y_pred") == 1
    assert set(features["y_pred"]) <= {"background", "dab_negative", "dab_positive"}
    np.testing.assert_allclose(features[probs], before[probs], atol=1e-3)
    assert "annotation" in features.columns  # other columns are kept
    heat = viewer.layers[f"{patches.name}{HEATMAP_SUFFIX}"]
    assert heat.metadata["pathviz_heatmap_of"] == "prob_dab_positive"
    # Every patch's value sits in the heatmap pixel over the patch's centre.
    centres = patches.data
    pixel = np.round((centres - np.asarray(heat.translate)) / np.asarray(heat.scale)).astype(int)
    shown = heat.data[pixel[:, 0], pixel[:, 1]]
    np.testing.assert_allclose(shown, features["prob_dab_positive"], atol=1e-6)

    widget.heatmap_column.value = "prob_background"
    shown = heat.data[pixel[:, 0], pixel[:, 1]]
    np.testing.assert_allclose(shown, features["prob_background"], atol=1e-6)


def test_widget_bad_input(make_napari_viewer, qtbot, notifications, tmp_path):
    from napari_pathviz._widgets.inference import InferenceWidget

    viewer = make_napari_viewer()
    widget = InferenceWidget(viewer)
    widget.run_button.clicked.emit()
    assert any("open a slide and its patches first" in m for m in notifications)
    viewer.open_sample("napari-pathviz", "demo")
    widget.model_path.value = DEMO_WEIGHTS
    widget.mean.value = "0.8 0.7"
    widget.run_button.clicked.emit()
    assert any("Mean: expected three numbers, got 2" in m for m in notifications)
    widget.mean.value = ""
    widget.model_path.value = str(_weights_without_card(tmp_path))
    widget.run_button.clicked.emit()  # a state dict without its architecture
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=60_000)
    assert any(
        "give its architecture as package.module:function in the Factory field" in m
        for m in notifications
    )
    assert "prob_0" not in viewer.layers[-1].features.columns  # nothing half-written


def _weights_without_card(folder):
    """The demo weights alone: without the model card beside them, nothing names the
    architecture."""
    import shutil

    return shutil.copyfile(DEMO_WEIGHTS, folder / "bare_weights.pt")
