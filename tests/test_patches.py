"""Patch tables: CSV, Parquet, PathFlowAI SQLite; validation errors name the file and row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_pathviz.errors import PathvizError
from napari_pathviz.io.tables import read_table, sqlite_patch_sizes, write_table
from napari_pathviz.patches import PatchTable, load_patches


def test_pathflowai_database_tables_and_slide_filter(pathflowai_project):
    db = pathflowai_project["db"]
    assert sqlite_patch_sizes(db) == ["128", "256"]
    table = load_patches(db, patch_size=256, slide_id="case01", slide_shape=(1000, 1400))
    expected = pathflowai_project["rows"].query("patch_size == 256 and ID == 'case01'")
    assert len(table) == len(expected) > 0
    assert "index" not in table.df.columns  # pandas' index column is dropped
    assert set(table.df.columns) >= {"ID", "x", "y", "patch_size", "annotation", "tumor", "stroma"}
    merged = table.df.merge(expected, on=["x", "y"], suffixes=("", "_expected"))
    np.testing.assert_allclose(merged["tumor"], merged["tumor_expected"])


def test_database_patch_size_errors(pathflowai_project):
    db = pathflowai_project["db"]
    with pytest.raises(
        PathvizError,
        match=r"patch_info\.db: holds tables for several patch "
        r"sizes \(128, 256\); choose one",
    ):
        load_patches(db)
    with pytest.raises(
        PathvizError,
        match=r"patch_info\.db: no table for patch size 224 "
        r"\(tables: 128, 256\)",
    ):
        load_patches(db, patch_size=224)
    with pytest.raises(
        PathvizError,
        match=r"no patches for slide ID 'case99' \(IDs present: "
        r"'case01', 'other_slide'\)",
    ):
        load_patches(db, patch_size=128, slide_id="case99")


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".tsv", ".db"])
def test_round_trip_formats(tmp_path, suffix):
    df = pd.DataFrame(
        {
            "ID": ["s1"] * 3,
            "x": [0, 224, 448],
            "y": [0, 0, 224],
            "patch_size": 224,
            "label": ["a", "b", "a"],
            "p": [0.1, 0.5, 0.9],
        }
    )
    path = write_table(df, tmp_path / f"patches{suffix}")
    table = load_patches(path, patch_size=224 if suffix == ".db" else None)
    pd.testing.assert_frame_equal(
        table.df[df.columns].reset_index(drop=True), df, check_dtype=False
    )


def test_patch_size_from_argument_when_no_column(tmp_path):
    path = tmp_path / "xy.csv"
    path.write_text("x,y\n0,0\n10,20\n")
    with pytest.raises(PathvizError, match=r"xy\.csv: no patch_size column; give the patch size"):
        load_patches(path)
    table = load_patches(path, patch_size=10, slide_id="s9")
    assert table.df["patch_size"].tolist() == [10, 10] and table.df["ID"].tolist() == ["s9"] * 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("y,patch_size\n0,10\n", r"bad\.csv: missing column\(s\) x"),
        ("a,b\n0,1\n", r"bad\.csv: missing column\(s\) x, y"),
        ("x,y,patch_size\n0,0,10\nten,5,10\n", r"bad\.csv: row 1: x is not a number \('ten'\)"),
        ("x,y,patch_size\n0,0,10\n5,,10\n", r"bad\.csv: row 1: y is not a number"),
        (
            "x,y,patch_size\n0,-3,10\n",
            r"bad\.csv: row 0: y must be a non-negative pixel coordinate, "
            r"found -3",
        ),
        ("x,y,patch_size\n0.5,3,10\n", r"bad\.csv: row 0: x must be a whole pixel, found 0.5"),
        ("x,y,patch_size\n0,3,0\n", r"bad\.csv: row 0: patch_size must be positive"),
    ],
)
def test_bad_tables_name_file_and_row(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(PathvizError, match=message):
        load_patches(path)


def test_patches_outside_the_slide(tmp_path):
    path = tmp_path / "far.csv"
    path.write_text("x,y,patch_size\n0,0,100\n1350,0,100\n")
    with pytest.raises(
        PathvizError,
        match=r"far\.csv: row 1: patch x=1350, y=0, size 100 lies "
        r"outside the slide \(1400 wide x 1000 high\)",
    ):
        load_patches(path, slide_shape=(1000, 1400))
    load_patches(path, slide_shape=(1000, 1450))


def test_unreadable_and_missing_tables(tmp_path):
    with pytest.raises(PathvizError, match=r"none\.csv: no such file"):
        read_table(tmp_path / "none.csv")
    (tmp_path / "junk.db").write_bytes(b"definitely not sqlite" * 10)
    with pytest.raises(PathvizError, match=r"junk\.db: not a readable SQLite database"):
        read_table(tmp_path / "junk.db")
    (tmp_path / "junk.parquet").write_bytes(b"nope")
    with pytest.raises(PathvizError, match=r"junk\.parquet: cannot read table"):
        read_table(tmp_path / "junk.parquet")


def test_square_centres_follow_the_pixel_centre_convention():
    """A P-pixel patch at (y0, x0) covers pixel centres y0..y0+P-1, so its square spans
    [y0 - 0.5, y0 + P - 0.5] and is centred on y0 + (P - 1) / 2."""
    table = PatchTable.from_frame(
        pd.DataFrame({"x": [0, 300], "y": [100, 7], "patch_size": [224, 10]})
    )
    np.testing.assert_allclose(table.centers_yx(), [[211.5, 111.5], [11.5, 304.5]])
    lo = table.centers_yx() - table.patch_sizes[:, None] / 2
    hi = table.centers_yx() + table.patch_sizes[:, None] / 2
    np.testing.assert_allclose(lo, [[99.5, -0.5], [6.5, 299.5]])
    np.testing.assert_allclose(hi, [[323.5, 223.5], [16.5, 309.5]])


def test_patches_for_slide_picks_and_labels_the_slides_rows(pathflowai_project):
    from napari_pathviz.io.tables import read_table
    from napari_pathviz.patches import patches_for_slide
    from napari_pathviz.slide import open_slide

    slide = open_slide(pathflowai_project["zarr"])
    df = read_table(pathflowai_project["db"], 128)
    table = patches_for_slide(df, "patch_info.db", slide, patch_size=128)
    assert set(table.df["ID"]) == {"case01"}  # the other slide's rows are left out
    no_ids = df[df["ID"] == "case01"].drop(columns="ID")
    assert set(patches_for_slide(no_ids, "t.csv", slide).df["ID"]) == {"case01"}
    with pytest.raises(PathvizError, match="lies outside the slide"):
        far = no_ids.assign(x=no_ids["x"] + 1400)
        patches_for_slide(far, "t.csv", slide)
