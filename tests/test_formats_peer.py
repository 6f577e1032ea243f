"""The files we write and read, checked against the reference readers and writers.

- PathFlowAI's patch database, read back with PathFlowAI's own code (load_sql_df, and the way its
  preprocessing, modify_patch_info, binarize_annotations and the dataset index the table);
- OME-Zarr, validated with ome-zarr-models (the NGFF 0.4 schema as pydantic models) and opened
  with ome-zarr-py's reader (what napari-ome-zarr uses); OME-Zarr written by ome-zarr-py opens;
- SVS, pyramidal TIFF and OME-TIFF read pixel for pixel as tiffslide reads them.
"""

from __future__ import annotations

import sqlite3

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr

from conftest import write_pyramidal_tiff
from napari_pathviz.errors import PathvizError
from napari_pathviz.io.pyramid import lazy_levels
from napari_pathviz.io.tables import sqlite_patch_sizes, write_table
from napari_pathviz.io.zarr_io import write_ome_zarr
from napari_pathviz.patches import load_patches
from napari_pathviz.slide import open_slide
from napari_pathviz.tissue import tissue_grid

# --------------------------------------------------------------------------- PathFlowAI database


def pathflowai_load_sql_df(sql_file, patch_size):
    """pathflowai/utils.py ``load_sql_df``, as it is written there."""
    conn = sqlite3.connect(sql_file)
    df = pd.read_sql('select * from "{}";'.format(patch_size), con=conn)  # noqa: UP032
    conn.close()
    return df


@pytest.fixture
def glass_slide(tmp_path, tissue_rgb):
    """Glass (grey-white) around a 640 x 896 block of real tissue at (y, x) = (192, 320)."""
    rng = np.random.default_rng(3)
    image = np.clip(rng.normal(238, 2, size=(1024, 1536, 3)), 0, 255).astype(np.uint8)
    image[192:832, 320:1216] = tissue_rgb[:640, :896]
    zarr.create_array(str(tmp_path / "case07.ome.zarr"), data=image, chunks=(256, 256, 3))
    return open_slide(tmp_path / "case07.ome.zarr"), image


def test_tissue_grid_database_reads_as_pathflowai_reads_it(tmp_path, glass_slide):
    slide, image = glass_slide
    table = tissue_grid(slide, 128, min_tissue=0.0)
    db = write_table(table.df, tmp_path / "patch_info.db")
    df = pathflowai_load_sql_df(db, 128)

    assert list(df.columns) == [
        "index",
        *("ID", "x", "y", "patch_size", "annotation"),
        *("background", "tissue"),
    ]
    assert len(df) == 8 * 12 and df["index"].tolist() == list(range(96))
    assert (df["ID"] == "case07").all() and (df["patch_size"] == 128).all()
    types = {r[1]: r[2] for r in sqlite3.connect(db).execute('PRAGMA table_info("128")')}
    assert types == {
        "index": "INTEGER",
        "ID": "TEXT",
        "x": "INTEGER",
        "y": "INTEGER",
        "patch_size": "INTEGER",
        "annotation": "TEXT",
        "background": "REAL",
        "tissue": "REAL",
    }
    # Areas by position from column 6 on (datasets.py binarize_annotations, cli collapse).
    areas = df.iloc[:, 6:]
    np.testing.assert_allclose(areas.sum(axis=1), 1.0, atol=1e-4)
    # utils.extract_patch_information: annotation = name of the largest area (index dropped).
    info = df.drop(columns="index")
    annot = list(info.iloc[:, 5:])
    expected = [annot[info.iloc[i, 5:].values.argmax()] for i in range(len(info))]
    assert df["annotation"].tolist() == expected
    # 24 whole 128-px cells lie inside the tissue block; the real image has pale lumen, so most
    # of them (17 measured), and no cell that is partly glass, are mostly tissue.
    inside = (df["y"] >= 192) & (df["y"] + 128 <= 832) & (df["x"] >= 320) & (df["x"] + 128 <= 1216)
    is_tissue = df["annotation"] == "tissue"
    assert inside.sum() == 24 and 14 <= is_tissue.sum() <= 24
    assert not (is_tissue & ~inside).any() and df.loc[is_tissue, "tissue"].min() > 0.5
    # Half-covered cells on the block's edge: a tie, which PathFlowAI's argmax gives to the
    # first area column.
    tie = df["tissue"] == 0.5
    assert tie.sum() >= 4 and (df.loc[tie, "annotation"] == "background").all()
    # utils.modify_patch_info(modify_patches=True): a patch's annotation names its area column.
    area = np.vectorize(lambda i: df.iloc[i][df.iloc[i]["annotation"]])(np.arange(len(df)))
    np.testing.assert_allclose(area, areas.max(axis=1))
    # datasets.binarize_annotations: the one-target classifier takes the last area column.
    from sklearn.preprocessing import LabelBinarizer

    annots = [a for a in list(df.iloc[:, 6:]) if a != "area"]
    assert [annots[-1]] == ["tissue"]
    assert list(LabelBinarizer().fit(df["annotation"]).classes_) == ["background", "tissue"]
    # -rb background -ma 0.5 keeps what the tissue fraction says.
    kept = df.loc[df["background"] <= 1.0 - 0.5]
    assert kept.index.equals(df.index[df["tissue"] >= 0.5])
    # Our own reader gives back the grid as it was made.
    ours = load_patches(db, patch_size=128)
    pd.testing.assert_frame_equal(ours.df, table.df, check_dtype=False)


def test_database_patches_are_the_pixels_pathflowai_reads(tmp_path, glass_slide):
    """PathFlowAI's dataset reads ``slides[ID][x:x+ps, y:y+ps, :3]`` of its (x, y, C) zarr."""
    slide, image = glass_slide
    write_table(tissue_grid(slide, 128, min_tissue=0.5).df, tmp_path / "patch_info.db")
    transposed = np.ascontiguousarray(image.transpose(1, 0, 2))
    zarr.create_array(str(tmp_path / "case07.zarr"), data=transposed, chunks=(256, 256, 3))
    df = pathflowai_load_sql_df(tmp_path / "patch_info.db", 128)
    pathflowai_slide = open_slide(tmp_path / "case07.zarr")  # found (x, y, C) by our database
    assert pathflowai_slide.source.axes == "xyc"
    for i in (0, len(df) // 2, len(df) - 1):
        row = df.iloc[i]
        xs, ys, ps = row["x"], row["y"], row["patch_size"]
        theirs = transposed[xs : xs + ps, ys : ys + ps, :3]
        np.testing.assert_array_equal(slide.read_region(ys, xs, ps, ps).transpose(1, 0, 2), theirs)
        np.testing.assert_array_equal(
            pathflowai_slide.read_region(ys, xs, ps, ps), theirs.transpose(1, 0, 2)
        )


def test_database_keeps_other_tables_and_refuses_to_replace_one(tmp_path, glass_slide):
    slide, _ = glass_slide
    db = tmp_path / "patch_info.db"
    grid128 = tissue_grid(slide, 128).df
    grid256 = tissue_grid(slide, 256).df
    write_table(grid128, db)
    write_table(grid256, db)
    assert sqlite_patch_sizes(db) == ["128", "256"]
    with pytest.raises(PathvizError, match=r"patch_info\.db: already holds table '128'") as err:
        write_table(grid128.head(3), db)
    assert "\n" not in str(err.value) and "overwrite" in str(err.value)
    assert len(pathflowai_load_sql_df(db, 128)) == len(grid128)  # untouched
    # A write that would clash for one size writes no size at all.
    both = pd.concat([grid128.head(2).assign(patch_size=512), grid256.head(2)])
    with pytest.raises(PathvizError, match="already holds table '256'"):
        write_table(both, db)
    assert sqlite_patch_sizes(db) == ["128", "256"]
    write_table(grid128.head(3), db, overwrite=True)
    assert len(pathflowai_load_sql_df(db, 128)) == 3
    assert len(pathflowai_load_sql_df(db, 256)) == len(grid256)


def test_cli_patches_database_is_pathflowai_readable_and_kept(tmp_path, ome_zarr):
    from conftest import run_cli

    db = tmp_path / "patch_info.db"
    args = ("patches", ome_zarr, "-o", db, "--patch-size", "128", "--min-tissue", "0.3")
    assert run_cli(*args).returncode == 0
    df = pathflowai_load_sql_df(db, 128)
    assert list(df.columns)[:6] == ["index", "ID", "x", "y", "patch_size", "annotation"]
    assert list(df.iloc[:, 6:]) == ["background", "tissue"] and len(df) > 0
    again = run_cli(*args)
    assert again.returncode == 2 and "already holds table '128'" in again.stderr
    assert run_cli(*args, "--overwrite").returncode == 0


def test_database_layout_for_other_tables_and_bad_input(tmp_path):
    db = tmp_path / "p.db"
    df = pd.DataFrame(
        {"y_pred": [0.2, 0.9], "index": [7, 9], "patch_size": 64, "x": [0, 64], "y": 0, "ID": "s"}
    )
    write_table(df, db)
    back = pathflowai_load_sql_df(db, 64)
    assert list(back.columns) == ["index", "ID", "x", "y", "patch_size", "annotation", "y_pred"]
    assert back["index"].tolist() == [0, 1] and (back["annotation"] == "NA").all()
    with pytest.raises(PathvizError, match=r"p2\.db: a PathFlowAI patch database needs .* ID"):
        write_table(df.drop(columns="ID"), tmp_path / "p2.db")
    with pytest.raises(PathvizError, match=r"p3\.db: row 1: x must be a whole number"):
        write_table(df.assign(x=[0, 1.5]), tmp_path / "p3.db")
    (tmp_path / "notes.db").write_text("not a database at all " * 40)
    with pytest.raises(PathvizError, match=r"notes\.db: cannot write the patch table"):
        write_table(df, tmp_path / "notes.db")


# ------------------------------------------------------------------------------------ OME-Zarr


def _ome_zarr_py_nodes(path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    return list(Reader(parse_url(str(path)))())


def test_written_ome_zarr_validates_and_opens_in_ome_zarr_py(ome_zarr, tissue_rgb):
    import ome_zarr_models
    from ome_zarr_models.v04.image import Image

    model = Image.from_zarr(zarr.open_group(str(ome_zarr), mode="r"))
    assert isinstance(ome_zarr_models.open_ome_zarr(str(ome_zarr)), Image)
    ms = model.attributes.multiscales[0]
    assert ms.version == "0.4" and ms.name == "slide.ome.zarr"
    assert [(a.name, a.type, a.unit) for a in ms.axes] == [
        ("c", "channel", None),
        ("y", "space", "micrometer"),
        ("x", "space", "micrometer"),
    ]
    scales = [d.coordinateTransformations[0].scale for d in ms.datasets]
    assert scales == [[1.0, 0.5, 0.5], [1.0, 1.0, 1.0], [1.0, 2.0, 2.0], [1.0, 4.0, 4.0]]
    shifts = [d.coordinateTransformations[1].translation for d in ms.datasets]
    assert shifts[:3] == [[0.0, 0.0, 0.0], [0.0, 0.25, 0.25], [0.0, 0.75, 0.75]]
    assert [c.color for c in model.attributes.omero.channels] == ["FF0000", "00FF00", "0000FF"]

    (node,) = _ome_zarr_py_nodes(ome_zarr)
    shapes = [d.shape for d in node.data]
    assert shapes == [(3, 1000, 1400), (3, 500, 700), (3, 250, 350), (3, 125, 175)]
    np.testing.assert_array_equal(np.asarray(node.data[0]).transpose(1, 2, 0), tissue_rgb)
    assert node.metadata["channel_names"] == ["red", "green", "blue"]
    slide = open_slide(ome_zarr)  # ...and ours shows the same pixels as one RGB image
    assert slide.rgb and slide.shape == (1000, 1400, 3)
    for ours, theirs in zip(slide.levels, node.data, strict=True):
        np.testing.assert_array_equal(ours.compute(), np.asarray(theirs).transpose(1, 2, 0))


def test_converted_scanner_pyramid_and_grey_image_validate(tmp_path, pyramidal_tiff, tissue_rgb):
    from ome_zarr_models.v04.image import Image

    tiff = open_slide(pyramidal_tiff)  # three native levels, converted without an mpp
    out = write_ome_zarr(tiff.levels, tmp_path / "scan.zarr", n_native=tiff.n_native, chunk=200)
    ms = Image.from_zarr(zarr.open_group(str(out), mode="r")).attributes.multiscales[0]
    assert all(a.unit is None for a in ms.axes) and ms.type is None  # scanner's own levels
    assert [d.coordinateTransformations[0].scale for d in ms.datasets][2] == [1.0, 4.0, 4.0]
    (node,) = _ome_zarr_py_nodes(out)
    for ours, theirs in zip(tiff.levels, node.data, strict=True):
        np.testing.assert_array_equal(ours.compute(), np.asarray(theirs).transpose(1, 2, 0))

    grey = da.from_array(tissue_rgb[..., :1], chunks=(256, 256, 1))
    out = write_ome_zarr(lazy_levels(grey, min_size=300), tmp_path / "grey.zarr", n_native=1)
    attrs = Image.from_zarr(zarr.open_group(str(out), mode="r")).attributes
    assert attrs.omero.channels[0].color == "FFFFFF" and attrs.multiscales[0].type == "mean"
    assert [d.shape for d in _ome_zarr_py_nodes(out)[0].data][0] == (1, 1000, 1400)
    np.testing.assert_array_equal(
        open_slide(out).read_region(0, 0, 5, 5)[..., 0], tissue_rgb[:5, :5, 0]
    )


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_written_by_ome_zarr_py_opens_pixel_equal(tmp_path, tissue_rgb, version):
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    fmt = FormatV04() if version == "0.4" else FormatV05()
    path = tmp_path / f"theirs{version}.ome.zarr"
    write_image(
        np.ascontiguousarray(tissue_rgb.transpose(2, 0, 1)),
        str(path),
        scale_factors=(2, 4),
        axes="cyx",
        fmt=fmt,
        scale={"y": 0.25, "x": 0.25},
        axes_units={"y": "micrometer", "x": "micrometer"},
    )
    slide = open_slide(path)
    (node,) = _ome_zarr_py_nodes(path)
    assert slide.source.axes == "cyx" and slide.mpp == pytest.approx(0.25)
    assert slide.n_native == 3 and slide.rgb
    for ours, theirs in zip(slide.levels, node.data, strict=True):
        np.testing.assert_array_equal(ours.compute(), np.asarray(theirs).transpose(1, 2, 0))
    np.testing.assert_array_equal(slide.read_region(101, 203, 64, 80), tissue_rgb[101:165, 203:283])


def test_old_yxc_ome_zarr_still_opens(tmp_path, tissue_rgb):
    """What the writer produced before it wrote c, y, x (NGFF 0.4, axes y, x, c)."""
    group = zarr.open_group(str(tmp_path / "old.zarr"), mode="w", zarr_format=2)
    group.create_array("0", data=tissue_rgb, chunks=(256, 256, 3))
    axes = [{"name": n, "type": t} for n, t in (("y", "space"), ("x", "space"), ("c", "channel"))]
    for axis in axes[:2]:
        axis["unit"] = "micrometer"
    scale = [{"type": "scale", "scale": [0.5, 0.5, 1.0]}]
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": axes,
            "datasets": [{"path": "0", "coordinateTransformations": scale}],
        }
    ]
    slide = open_slide(tmp_path / "old.zarr")
    assert slide.source.axes == "yxc" and slide.mpp == pytest.approx(0.5)
    np.testing.assert_array_equal(slide.levels[0].compute(), tissue_rgb)


def test_failed_conversion_leaves_no_output(tmp_path, tissue_rgb):
    def fail_late(block, block_info=None):
        if block_info[0]["chunk-location"][0] == 2:
            raise OSError("disk went away")
        return block

    level0 = da.from_array(tissue_rgb, chunks=(256, 256, 3))
    failing = level0.map_blocks(fail_late, dtype=level0.dtype)
    with pytest.raises(OSError, match="disk went away"):
        write_ome_zarr([failing], tmp_path / "out.zarr", chunk=256)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "taken.zarr").mkdir()
    with pytest.raises(PathvizError, match=r"taken\.zarr: already exists"):
        write_ome_zarr([level0], tmp_path / "taken.zarr")
    assert list((tmp_path / "taken.zarr").iterdir()) == []


# ----------------------------------------------------------------------------------- tiffslide


def _compare_with_tiffslide(path):
    """Levels, downsamples and region reads: tiffslide takes a level-0 (x, y) location and a
    (width, height) at the level; ours takes (y, x, height, width) in the level's own pixels."""
    import tiffslide

    ts = tiffslide.TiffSlide(str(path))
    slide = open_slide(path)
    assert ts.level_count == slide.n_native
    ours_dims = [(lv.shape[1], lv.shape[0]) for lv in slide.levels[: slide.n_native]]
    assert list(ts.level_dimensions) == ours_dims
    w0, h0 = ts.dimensions
    reads = 0
    for level, ds in enumerate(ts.level_downsamples):
        lw, lh = ts.level_dimensions[level]
        whole = ts.read_region((0, 0), level, (lw, lh), as_array=True)
        np.testing.assert_array_equal(slide.levels[level].compute(), whole)
        for x0, y0, w, h in [
            (0, 0, 64, 64),
            (333, 217, 100, 120),
            (w0 // 2 + 7, h0 // 3 + 5, 96, 80),
            (w0 - 50, h0 - 30, 128, 96),  # over the right and bottom edges: zero padded
            (-40, -24, 64, 64),  # before the top-left corner
        ]:
            theirs = ts.read_region((x0, y0), level, (w, h), as_array=True)
            ours = slide.read_region(int(y0 / ds), int(x0 / ds), h, w, level)
            np.testing.assert_array_equal(ours, theirs)
            reads += 1
    return ts, slide, reads


@pytest.mark.parametrize("fixture", ["pyramidal_tiff", "svs_file", "ome_tiff"])
def test_slides_read_as_tiffslide_reads_them(request, fixture):
    path = request.getfixturevalue(fixture)
    ts, slide, reads = _compare_with_tiffslide(path)
    assert reads == 5 * slide.n_native
    assert list(ts.level_downsamples) == pytest.approx(slide.downsamples[: slide.n_native])
    if fixture == "ome_tiff":
        # tiffslide reads no OME-XML; we take PhysicalSizeX from it.
        assert ts.properties["tiffslide.mpp-x"] is None and slide.mpp == pytest.approx(0.5)
    else:
        assert slide.mpp == pytest.approx(ts.properties["tiffslide.mpp-x"])
        assert slide.mpp == pytest.approx(ts.properties["tiffslide.mpp-y"])


def test_odd_sized_pyramid_against_tiffslide(tmp_path, tissue_rgb):
    """999 x 1401: levels 500 x 701 and 250 x 351. tiffslide (like OpenSlide) averages the
    width and height ratios for a downsample; we take the height ratio: 0.06% apart at most."""
    odd = np.concatenate([tissue_rgb, tissue_rgb[:, :1]], axis=1)[:999]
    path = write_pyramidal_tiff(tmp_path / "odd.tif", np.ascontiguousarray(odd))
    ts, slide, _ = _compare_with_tiffslide(path)
    theirs, ours = np.array(ts.level_downsamples), np.array(slide.downsamples)
    assert list(np.round(ours, 4)) == [1.0, 1.998, 3.996]
    assert np.abs(ours / theirs - 1).max() == pytest.approx(0.00057, abs=1e-5)
    assert tifffile.TiffFile(path).series[0].levels[2].shape == (250, 351, 3)
