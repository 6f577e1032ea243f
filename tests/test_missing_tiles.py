"""A TIFF tile whose offset or byte count is zero is not in the file: tifffile reads it as black
without an error, and extract used to run the model on black patches, silently changing their
predictions. extract now refuses such patches in one line naming the slide, level and tile,
before any store or table is written; with --allow-missing-tiles it runs and marks them."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_pathviz.cli import main
from napari_pathviz.slide import open_slide
from napari_pathviz.slide_check import patches_on_missing_tiles

TILE, PATCH = 128, 64


def _zero_tile(path, tile_index: int, page: int = 0, tag: str = "TileOffsets"):
    with tifffile.TiffFile(path, mode="r+b") as tif:
        entry = tif.pages[page].tags[tag]
        values = list(entry.value)
        values[tile_index] = 0
        entry.overwrite(values)


@pytest.fixture
def holed_tiff(tmp_path, tissue_rgb):
    """A tiled 512 x 512 slide, tile 1 (x 128-255, y 0-127) missing: offset 0."""
    path = tmp_path / "holed.tif"
    image = np.ascontiguousarray(tissue_rgb[:512, :512])
    tifffile.imwrite(path, image, tile=(TILE, TILE), photometric="rgb")
    _zero_tile(path, 1)
    assert tifffile.imread(path)[:TILE, TILE : 2 * TILE].max() == 0  # read as black, silently
    return path


@pytest.fixture
def grid(tmp_path):
    ys, xs = np.meshgrid(np.arange(0, 512, PATCH), np.arange(0, 512, PATCH), indexing="ij")
    table = pd.DataFrame({"ID": "holed", "x": xs.ravel(), "y": ys.ravel(), "patch_size": PATCH})
    path = tmp_path / "grid.csv"
    table.to_csv(path, index=False)
    return table, path


def _on_tile_1(table) -> np.ndarray:
    return ((table["x"] >= TILE) & (table["x"] < 2 * TILE) & (table["y"] < TILE)).to_numpy()


def test_the_patches_on_a_missing_tile_are_found_from_the_tile_table(holed_tiff, grid):
    table, _ = grid
    mask, first = patches_on_missing_tiles(open_slide(holed_tiff), table)
    np.testing.assert_array_equal(mask, _on_tile_1(table))
    assert mask.sum() == 4
    assert "holed.tif: level 0: tile 1 at x=128, y=0 is missing (offset 0)" in first
    # A patch straddling the tile's edge touches it too; one beside it does not.
    edge = pd.DataFrame({"x": [100, 60, 256], "y": [100, 0, 0], "patch_size": [64, 64, 64]})
    mask, _ = patches_on_missing_tiles(open_slide(holed_tiff), edge)
    assert mask.tolist() == [True, False, False]


def test_a_missing_tile_of_a_lower_level_is_found_there(tmp_path, tissue_rgb, grid):
    from conftest import write_pyramidal_tiff

    path = write_pyramidal_tiff(tmp_path / "pyramid.tif", tissue_rgb[:512, :512].copy(), levels=2)
    _zero_tile(path, 0, page=0, tag="TileByteCounts")  # level 1 is a SubIFD of page 0
    with tifffile.TiffFile(path, mode="r+b") as tif:
        entry = tif.pages[0].pages[0].tags["TileByteCounts"]  # level 1's only tile
        entry.overwrite([0] * len(entry.value))
    slide = open_slide(path)
    table, _ = grid
    level0, first0 = patches_on_missing_tiles(slide, table, level=0)
    level1, first1 = patches_on_missing_tiles(slide, table, level=1)
    assert level1.all() and "level 1: tile 0" in first1 and "byte count 0" in first1
    np.testing.assert_array_equal(level0, (table["x"] < 256) & (table["y"] < 256))


def _extract_argv(slide, table, out, *extra) -> list[str]:
    weights = resources.files("napari_pathviz") / "data" / "demo_model.pt"
    return [
        "extract",
        "-m",
        str(weights),
        "--slide",
        str(slide),
        "--patches",
        str(table),
        "-o",
        str(out),
        "--device",
        "cpu",
        "--batch-size",
        "16",
        *extra,
    ]


def test_extract_refuses_patches_on_a_missing_tile(holed_tiff, grid, tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code = main(_extract_argv(holed_tiff, grid[1], out_dir / "pred.parquet"))
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    for fragment in ("holed.tif", "level 0", "tile 1 at x=128, y=0", "--allow-missing-tiles"):
        assert fragment in errors[0], errors[0]
    assert list(out_dir.iterdir()) == []  # no table, no results store


def test_allowed_missing_tiles_are_marked(holed_tiff, grid, tmp_path, capsys):
    table, csv = grid
    out = tmp_path / "pred.parquet"
    code = main(_extract_argv(holed_tiff, csv, out, "--allow-missing-tiles", "--no-embeddings"))
    err = capsys.readouterr().err
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "missing tiles" in line]
    assert len(warnings) == 1 and "4 of 64 patches" in warnings[0], err
    result = pd.read_parquet(out)
    assert result["missing_tiles"].dtype == bool
    np.testing.assert_array_equal(result["missing_tiles"].to_numpy(), _on_tile_1(table))


def test_a_cohort_slide_on_a_missing_tile_fails_alone_or_is_marked(
    holed_tiff, grid, tmp_path, capsys
):
    """In a cohort the refusal is that slide's failure (its summary row names the tile); with
    allow_missing_tiles its table carries the column, as the single-slide command's does."""
    import logging

    from distributed import LocalCluster

    from napari_pathviz.cohort import ModelRecipe, run_cohort

    table, csv = grid
    recipe = ModelRecipe(path=str(resources.files("napari_pathviz") / "data" / "demo_model.pt"))
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        dashboard_address=None,
        silence_logs=logging.CRITICAL,
    ) as cluster:
        options = {"patches": csv, "scheduler": cluster.scheduler_address, "device": "cpu"}
        refused = run_cohort([holed_tiff], recipe, tmp_path / "refused", **options)
        marked = run_cohort(
            [holed_tiff], recipe, tmp_path / "marked", allow_missing_tiles=True, **options
        )
        # The CLI says so on stderr: workers' warnings go to their log, so it counts the rows.
        other = tmp_path / "holed2.tif"
        other.write_bytes(holed_tiff.read_bytes())
        both = tmp_path / "both.csv"
        pd.concat([table, table.assign(ID="holed2")]).to_csv(both, index=False)
        argv = _extract_argv(other, both, tmp_path / "cli", "--allow-missing-tiles")
        argv[argv.index("--slide") + 1 : argv.index("--slide") + 2] = [str(holed_tiff), str(other)]
        capsys.readouterr()
        code = main([*argv, "--scheduler", cluster.scheduler_address])
    (row,) = refused.itertuples()
    assert row.status == "failed" and "level 0: tile 1 at x=128, y=0 is missing" in row.error
    assert not list((tmp_path / "refused").glob("*.parquet"))
    (row,) = marked.itertuples()
    assert row.status == "done", row.error
    result = pd.read_parquet(tmp_path / "marked" / row.output)
    np.testing.assert_array_equal(result["missing_tiles"].to_numpy(), _on_tile_1(table))
    err = capsys.readouterr().err
    assert code == 0, err
    for slide in (holed_tiff, other):
        assert f"{slide}: 4 of 64 patches lie on missing tiles" in err, err


def test_the_model_inference_widget_refuses_in_a_notification(
    make_napari_viewer, qtbot, holed_tiff, grid, notifications
):
    """The widget runs the same extract: a notification names the tile, and no prediction
    column is added to the patches."""
    pytest.importorskip("napari")
    viewer = make_napari_viewer()
    viewer.open(str(holed_tiff), plugin="napari-pathviz")
    viewer.open(str(grid[1]), plugin="napari-pathviz")
    patches = viewer.layers[-1]
    columns = list(patches.features.columns)
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-pathviz", "Model inference")
    widget.model_path.value = str(resources.files("napari_pathviz") / "data" / "demo_model.pt")
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    assert any("level 0: tile 1 at x=128, y=0 is missing" in m for m in notifications), (
        notifications
    )
    assert list(patches.features.columns) == columns
