"""TIFF-family slides: every level equals what tifffile decodes, metadata, and bad input."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import tifffile

from napari_pathviz.errors import PathvizError
from napari_pathviz.slide import open_slide


def _reference_levels(path):
    with tifffile.TiffFile(path) as tif:
        return [level.asarray() for level in tif.series[0].levels]


@pytest.mark.parametrize("fixture", ["pyramidal_tiff", "svs_file", "ome_tiff"])
def test_every_level_matches_the_file(request, fixture):
    path = request.getfixturevalue(fixture)
    slide = open_slide(path)
    reference = _reference_levels(path)
    assert slide.n_native == len(reference) >= 2
    for level, expected in enumerate(reference):
        assert slide.levels[level].shape == expected.shape
        np.testing.assert_array_equal(slide.levels[level].compute(), expected)
        # Region reads bypass dask; they must agree with it, including at odd offsets.
        h, w = expected.shape[:2]
        y, x = h // 3 + 1, w // 5 + 3
        np.testing.assert_array_equal(
            slide.read_region(y, x, 100, 120, level), expected[y : y + 100, x : x + 120]
        )


def test_formats_and_microns_per_pixel(pyramidal_tiff, svs_file, ome_tiff):
    tiff, svs, ome = open_slide(pyramidal_tiff), open_slide(svs_file), open_slide(ome_tiff)
    assert tiff.source.format == "tiff:tiff" and tiff.mpp == pytest.approx(0.25)
    assert svs.source.format == "tiff:svs" and svs.mpp == pytest.approx(0.499)
    assert ome.source.format == "tiff:ome-tiff" and ome.mpp == pytest.approx(0.5)
    assert svs.slide_id == "scan" and ome.slide_id == "scan"


def test_svs_pyramid_skips_thumbnail_and_label(svs_file, tissue_rgb):
    slide = open_slide(svs_file)
    assert [lv.shape[:2] for lv in slide.levels] == [(1000, 1400), (500, 700), (250, 350)]


def test_single_level_tiff_gets_lazy_levels(tmp_path, tissue_rgb):
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, tissue_rgb, tile=(256, 256), photometric="rgb")
    slide = open_slide(path)
    assert slide.n_native == 1
    assert [lv.shape[:2] for lv in slide.levels] == [(1000, 1400), (500, 700), (250, 350)]
    expected = tissue_rgb[:2, :2].astype(np.uint32).sum(axis=(0, 1))
    np.testing.assert_array_equal(slide.levels[1][0, 0].compute(), (expected + 2) // 4)


def test_region_outside_the_slide_is_zero_padded(pyramidal_tiff):
    region = open_slide(pyramidal_tiff).read_region(-10, 1390, 30, 30)
    decoded = tifffile.imread(pyramidal_tiff)
    assert region.shape == (30, 30, 3)
    np.testing.assert_array_equal(region[10:, :10], decoded[:20, 1390:])
    assert not region[:10].any() and not region[:, 10:].any()


def test_missing_file():
    with pytest.raises(PathvizError, match=r"nowhere\.svs: no such file"):
        open_slide("nowhere.svs")


def test_stripped_tiff_is_refused_unless_allowed(tmp_path, tissue_rgb):
    path = tmp_path / "strips.tif"
    tifffile.imwrite(path, tissue_rgb, photometric="rgb", rowsperstrip=64)
    with pytest.raises(PathvizError, match=r"strips\.tif: TIFF is not tiled"):
        open_slide(path)
    slide = open_slide(path, allow_untiled=True)
    np.testing.assert_array_equal(slide.read_region(5, 7, 50, 60), tissue_rgb[5:55, 7:67])


def test_not_a_tiff(tmp_path):
    path = tmp_path / "fake.svs"
    path.write_text("hello")
    with pytest.raises(PathvizError, match=r"fake\.svs: not a readable TIFF"):
        open_slide(path)


def test_jpeg_svs_without_imagecodecs(svs_file, monkeypatch):
    # None in sys.modules makes "import imagecodecs" fail, as on a machine without it.
    monkeypatch.setitem(sys.modules, "imagecodecs", None)
    with pytest.raises(PathvizError, match=r"scan\.svs: tiles are JPEG-compressed .* imagecodecs"):
        open_slide(svs_file)


def test_corrupt_tile_names_file_and_level(tmp_path, tissue_rgb):
    path = tmp_path / "broken.tif"
    tifffile.imwrite(
        path, tissue_rgb, tile=(256, 256), photometric="rgb", compression="jpeg", metadata=None
    )
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[0]
        count = tif.pages[0].databytecounts[0]
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\x00" * count)
    slide = open_slide(path)
    with pytest.raises(PathvizError, match=r"broken\.tif: level 0: cannot read region"):
        slide.read_region(0, 0, 64, 64)
