"""Zarr slides: OME-Zarr (y x c and c y x), numbered levels, single arrays, PathFlowAI (x, y, C),
the OME-Zarr writer, and missing/corrupt chunks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr

from napari_pathviz.errors import PathvizError
from napari_pathviz.io.pyramid import downsample_2x
from napari_pathviz.io.zarr_io import write_ome_zarr
from napari_pathviz.slide import open_slide


def _mean2(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    blocks = image[:h, :w].astype(np.uint32).reshape(h // 2, 2, w // 2, 2, -1).sum(axis=(1, 3))
    return ((blocks + 2) // 4).astype(np.uint8)


def test_ome_zarr_written_by_the_package(ome_zarr, tissue_rgb):
    slide = open_slide(ome_zarr)
    assert slide.source.format == "ome-zarr"
    assert slide.mpp == pytest.approx(0.5)
    assert slide.slide_id == "slide"
    expected = tissue_rgb
    for level in slide.levels:
        np.testing.assert_array_equal(level.compute(), expected)
        expected = _mean2(expected)
    meta = json.loads((ome_zarr / ".zattrs").read_text())["multiscales"][0]
    assert meta["version"] == "0.4"
    assert [a["name"] for a in meta["axes"]] == ["c", "y", "x"]  # NGFF: channel before space
    assert slide.source.axes == "cyx" and slide.rgb  # still one RGB image
    scales = [d["coordinateTransformations"][0]["scale"] for d in meta["datasets"]]
    assert scales[0] == [1.0, 0.5, 0.5] and scales[1] == [1.0, 1.0, 1.0]


def test_ome_zarr_channel_first(tmp_path, tissue_rgb):
    """An OME-Zarr 0.4 with axes c, y, x (as many converters write) is shown y, x, c."""
    group = zarr.open_group(str(tmp_path / "cyx.ome.zarr"), mode="w", zarr_format=2)
    levels = [tissue_rgb, _mean2(tissue_rgb)]
    for i, level in enumerate(levels):
        group.create_array(
            str(i), data=np.ascontiguousarray(level.transpose(2, 0, 1)), chunks=(3, 256, 256)
        )
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [
                {"name": "c", "type": "channel"},
                {"name": "y", "type": "space", "unit": "nanometer"},
                {"name": "x", "type": "space", "unit": "nanometer"},
            ],
            "datasets": [
                {
                    "path": str(i),
                    "coordinateTransformations": [
                        {"type": "scale", "scale": [1.0, 250.0 * 2**i, 250.0 * 2**i]}
                    ],
                }
                for i in range(2)
            ],
        }
    ]
    slide = open_slide(tmp_path / "cyx.ome.zarr")
    assert slide.source.axes == "cyx" and slide.mpp == pytest.approx(0.25)
    for level, expected in zip(slide.levels, levels, strict=True):
        np.testing.assert_array_equal(level.compute(), expected)
    np.testing.assert_array_equal(slide.read_region(11, 13, 40, 50), tissue_rgb[11:51, 13:63])


def test_ome_zarr_v05_on_zarr_format_3(tmp_path, tissue_rgb):
    group = zarr.open_group(str(tmp_path / "v05.zarr"), mode="w", zarr_format=3)
    group.create_array("s0", data=tissue_rgb, chunks=(256, 256, 3))
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": [
                    {"name": "y", "type": "space", "unit": "micrometer"},
                    {"name": "x", "type": "space", "unit": "micrometer"},
                    {"name": "c", "type": "channel"},
                ],
                "datasets": [
                    {
                        "path": "s0",
                        "coordinateTransformations": [{"type": "scale", "scale": [0.3, 0.3, 1.0]}],
                    }
                ],
            }
        ],
    }
    slide = open_slide(tmp_path / "v05.zarr")
    assert slide.mpp == pytest.approx(0.3) and slide.n_native == 1 and len(slide.levels) == 3
    np.testing.assert_array_equal(slide.levels[0].compute(), tissue_rgb)


def test_group_of_numbered_levels(tmp_path, tissue_rgb):
    group = zarr.open_group(str(tmp_path / "levels.zarr"), mode="w")
    levels = [tissue_rgb, _mean2(tissue_rgb), _mean2(_mean2(tissue_rgb))]
    for i, level in enumerate(levels):
        group.create_array(str(i), data=level, chunks=(200, 200, 3))
    slide = open_slide(tmp_path / "levels.zarr")
    assert slide.source.format == "zarr-levels" and slide.n_native == 3
    for level, expected in zip(slide.levels, levels, strict=True):
        np.testing.assert_array_equal(level.compute(), expected)


def test_single_array_gets_lazy_levels(tmp_path, tissue_rgb):
    zarr.create_array(str(tmp_path / "one.zarr"), data=tissue_rgb, chunks=(300, 300, 3))
    slide = open_slide(tmp_path / "one.zarr")
    assert slide.n_native == 1
    assert [lv.shape[:2] for lv in slide.levels] == [(1000, 1400), (500, 700), (250, 350)]
    np.testing.assert_array_equal(slide.levels[2].compute(), _mean2(_mean2(tissue_rgb)))
    # A lazily built level reads through dask; it must agree with the full computation.
    np.testing.assert_array_equal(
        slide.read_region(20, 30, 50, 60, level=1), _mean2(tissue_rgb)[20:70, 30:90]
    )


def test_pathflowai_slide_detected_from_its_patch_database(pathflowai_project):
    slide = open_slide(pathflowai_project["zarr"])
    assert slide.source.axes == "xyc"
    assert slide.slide_id == "case01"
    assert (slide.height, slide.width) == (1000, 1400)
    image = pathflowai_project["image"]
    np.testing.assert_array_equal(slide.levels[0].compute(), image)
    np.testing.assert_array_equal(slide.read_region(100, 700, 128, 256), image[100:228, 700:956])


def test_pathflowai_layout_forced_explicitly(tmp_path, tissue_rgb):
    zarr.create_array(
        str(tmp_path / "lonely.zarr"),
        data=tissue_rgb.transpose(1, 0, 2).copy(),
        chunks=(256, 256, 3),
    )
    assert open_slide(tmp_path / "lonely.zarr").shape == (1400, 1000, 3)  # no database: as stored
    slide = open_slide(tmp_path / "lonely.zarr", layout="xyc")
    np.testing.assert_array_equal(slide.levels[0].compute(), tissue_rgb)


def test_writer_converts_a_pathflowai_slide(tmp_path, pathflowai_project):
    slide = open_slide(pathflowai_project["zarr"])
    out = write_ome_zarr(
        slide.levels, tmp_path / "converted.zarr", n_native=slide.n_native, chunk=256
    )
    converted = open_slide(out)
    assert converted.source.axes == "cyx" and converted.n_native == len(slide.levels)
    for a, b in zip(converted.levels, slide.levels, strict=True):
        np.testing.assert_array_equal(a.compute(), b.compute())


def test_writer_reports_progress_and_can_be_cancelled(tmp_path, tissue_rgb):
    import dask.array as da

    level0 = da.from_array(tissue_rgb, chunks=(256, 256, 3))
    levels = [level0, downsample_2x(level0)]
    seen = []
    write_ome_zarr(
        levels, tmp_path / "p.zarr", chunk=256, progress=lambda d, t: seen.append((d, t))
    )
    total = 4 * 6 + 2 * 3
    assert seen[-1] == (total, total) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    with pytest.raises(InterruptedError):
        write_ome_zarr(levels, tmp_path / "c.zarr", chunk=256, cancelled=lambda: True)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["p.zarr"]  # nothing half-written left
    with pytest.raises(PathvizError, match=r"p\.zarr: already exists"):
        write_ome_zarr(levels, tmp_path / "p.zarr")


def test_missing_chunk_is_an_error_naming_it(ome_zarr):
    (ome_zarr / "0" / "0" / "1" / "2").unlink()  # level 0, channel chunk 0, chunk row 1, col 2
    slide = open_slide(ome_zarr)
    with pytest.raises(PathvizError, match=r"slide\.ome\.zarr: level 0: chunk 0/0/1/2 is missing"):
        slide.read_region(300, 520, 10, 10)
    with pytest.raises(PathvizError, match="chunk 0/0/1/2 is missing"):
        slide.levels[0].compute()  # the napari path (dask) reports it too
    np.testing.assert_array_equal(
        slide.read_region(0, 0, 10, 10), open_slide(ome_zarr).levels[0][:10, :10].compute()
    )
    blank = open_slide(ome_zarr, allow_missing_chunks=True).read_region(300, 520, 10, 10)
    assert not blank.any()


def test_corrupt_chunk_is_an_error_naming_file_and_level(ome_zarr):
    (ome_zarr / "1" / "0" / "0" / "0").write_bytes(b"not blosc at all" * 8)
    slide = open_slide(ome_zarr)
    with pytest.raises(
        PathvizError, match=r"slide\.ome\.zarr: level 1: cannot read region .*corrupt"
    ):
        slide.read_region(0, 0, 16, 16, level=1)


def test_bad_zarr_inputs(tmp_path):
    with pytest.raises(PathvizError, match=r"absent\.zarr: no such file"):
        open_slide(tmp_path / "absent.zarr")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(PathvizError, match=r"empty\.zarr: not a readable zarr"):
        open_slide(tmp_path / "empty.zarr")
    group = zarr.open_group(str(tmp_path / "nolevels.zarr"), mode="w")
    group.create_array("image", shape=(10, 10, 3), dtype="uint8")
    with pytest.raises(PathvizError, match=r"nolevels\.zarr: zarr group has no OME"):
        open_slide(tmp_path / "nolevels.zarr")
    zarr.create_array(str(tmp_path / "five.zarr"), shape=(10, 10, 5), dtype="uint8")
    with pytest.raises(PathvizError, match=r"five\.zarr: expected 1, 3 or 4 channels, found 5"):
        open_slide(tmp_path / "five.zarr")
    with pytest.raises(PathvizError, match="layout 'zyx' is not one of"):
        open_slide(tmp_path / "five.zarr", layout="zyx")
    with pytest.raises(PathvizError, match=r"notes\.txt: not a slide format"):
        (tmp_path / "notes.txt").write_text("x")
        open_slide(tmp_path / "notes.txt")


def test_check_slide_reads_every_chunk(ome_zarr):
    from napari_pathviz.slide_check import check_slide

    slide = open_slide(ome_zarr)
    assert check_slide(slide) == sum(
        -(-lv.shape[0] // 256) * -(-lv.shape[1] // 256) for lv in slide.levels
    )
    shutil.rmtree(ome_zarr / "2")
    (ome_zarr / "2").mkdir()
    (ome_zarr / "2" / ".zarray").write_text(
        (ome_zarr / "1" / ".zarray").read_text().replace("500", "250").replace("700", "350")
    )
    with pytest.raises(PathvizError, match=r"level 2: chunk 2/0/0/0 is missing"):
        check_slide(open_slide(ome_zarr, allow_missing_chunks=True))
