"""The `pathviz` command end to end: outputs on disk, exit status 2 with one line on bad input."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from napari_pathviz.cli import build_parser, main
from napari_pathviz.slide import open_slide

COMMANDS = {
    "demo",
    "info",
    "check",
    "patches",
    "convert",
    "render",
    "plot-embeddings",
    "plot-image-umap-embeddings",
    "extract",
    "plot-predictions",
    "shapley-plot",
    "gradcam",
    "sanity-check",
    "export-geojson",
    "annotate",
}


def test_help_lists_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout
    subparsers = build_parser()._subparsers._group_actions[0].choices
    assert set(subparsers) == COMMANDS


def test_info_describes_levels(svs_file, capsys):
    assert main(["info", str(svs_file)]) == 0
    out = capsys.readouterr().out
    assert "format: tiff:svs" in out and "microns per pixel: 0.499" in out
    assert "0: 1000 x 1400 x 3 uint8" in out and "2: 250 x 350 x 3 uint8" in out


def test_convert_then_open(tmp_path, pyramidal_tiff, capsys):
    out = tmp_path / "converted.zarr"
    assert main(["convert", str(pyramidal_tiff), str(out), "--chunk", "256"]) == 0
    source, converted = open_slide(pyramidal_tiff), open_slide(out)
    assert converted.source.format == "ome-zarr" and converted.mpp == pytest.approx(0.25)
    assert len(converted.levels) == len(source.levels)
    for a, b in zip(converted.levels, source.levels, strict=True):
        np.testing.assert_array_equal(a.compute(), b.compute())
    assert main(["check", str(out)]) == 0
    assert "all present and readable" in capsys.readouterr().out


def test_patches_writes_a_grid(tmp_path, ome_zarr):
    out = tmp_path / "grid.parquet"
    result = run_cli("patches", ome_zarr, "-o", out, "--patch-size", "128", "--min-tissue", "0.3")
    assert result.returncode == 0, result.stderr
    df = pd.read_parquet(out)
    assert len(df) > 0 and (df["patch_size"] == 128).all() and (df["tissue"] >= 0.3).all()
    assert f"{len(df)} patches of 128 px" in result.stdout


def test_render_with_a_pathflowai_project(tmp_path, pathflowai_project):
    out = tmp_path / "fig.png"
    code = main(
        [
            "render",
            str(pathflowai_project["zarr"]),
            "--patches",
            str(pathflowai_project["db"]),
            "--patch-size",
            "256",
            "--color-by",
            "tumor",
            "-o",
            str(out),
        ]
    )
    assert code == 0 and out.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["info", "{tmp}/missing.svs"], "missing.svs: no such file or directory"),
        (
            ["patches", "{slide}", "-o", "{tmp}/g.csv", "--patch-size", "0"],
            "--patch-size must be a whole number at least 1, got 0",
        ),
        (
            ["render", "{slide}", "--patches", "{tmp}/bad.csv", "-o", "{tmp}/f.png"],
            "bad.csv: row 1: x is not a number ('left')",
        ),
        (
            ["render", "{slide}", "--patches", "{tmp}/far.csv", "-o", "{tmp}/f.png"],
            "far.csv: row 0: patch x=5000, y=0, size 64 lies outside the slide",
        ),
        (["convert", "{slide}", "{slide}"], "is the input SLIDE"),
        (["info", "{tmp}/strips.tif"], "strips.tif: TIFF is not tiled"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, ome_zarr, tissue_rgb, args, message):
    import tifffile

    (tmp_path / "bad.csv").write_text("x,y,patch_size\n0,0,64\nleft,0,64\n")
    (tmp_path / "far.csv").write_text("x,y,patch_size\n5000,0,64\n")
    tifffile.imwrite(tmp_path / "strips.tif", tissue_rgb, photometric="rgb")
    argv = [a.format(tmp=tmp_path, slide=ome_zarr) for a in args]
    result = run_cli(*argv)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"pathviz {argv[0]}: error: ") and message in lines[0]


def test_unknown_option_is_exit_2():
    assert run_cli("patches", "--nope").returncode == 2


def test_headless_demo_writes_results(tmp_path):
    out = tmp_path / "demo"
    result = run_cli("demo", "--headless", "--out", out)
    assert result.returncode == 0, result.stderr
    df = pd.read_csv(out / "patches.csv")
    assert {"annotation", "prob_dab_positive", "y_pred"} <= set(df.columns)
    for name in ("slide_patches_annotation.png", "slide_patches_prediction.png"):
        assert (out / name).stat().st_size > 50_000
    # The embedding explorer's headless outputs: plotly HTML, coordinates, image mosaic.
    assert "plotly" in (out / "embeddings_umap.html").read_text()[:200_000].lower()
    coords = pd.read_csv(out / "umap_coords.csv")
    assert list(coords.columns) == ["ID", "x", "y", "patch_size", "umap_0", "umap_1", "umap_2"]
    assert len(coords) == len(df)
    assert (out / "umap_image_mosaic.png").stat().st_size > 50_000
    for method in ("gradient", "deep", "gradcam", "gradcampp"):
        assert (out / f"attributions_{method}.png").stat().st_size > 20_000


def test_demo_without_display_falls_back_to_files(tmp_path):
    env = {"DISPLAY": "", "WAYLAND_DISPLAY": ""}
    result = run_cli("demo", "--out", tmp_path / "d", env=env)
    assert result.returncode == 0, result.stderr
    assert "no display found" in result.stderr
    assert (tmp_path / "d" / "slide_patches_annotation.png").exists()


def test_missing_chunk_and_missing_codec_exit_2(ome_zarr, svs_file, monkeypatch, capsys):
    (ome_zarr / "0" / "0" / "1" / "0").unlink()
    assert main(["check", str(ome_zarr)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pathviz check: error: ") and "level 0: chunk 0/0/1/0 is missing" in err
    assert "\n" not in err
    monkeypatch.setitem(sys.modules, "imagecodecs", None)
    assert main(["info", str(svs_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert "scan.svs: tiles are JPEG-compressed" in err and "pip install imagecodecs" in err
