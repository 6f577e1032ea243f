"""A corrupt or missing chunk does not stop a slide opening in napari (issue 18, item 11):
nothing but what is on screen is read, and a chunk that cannot be read is shown blank with one
warning naming the file, level and region; the rest of the slide shows its real pixels."""

from __future__ import annotations

import numpy as np
import pytest

from hostile_workspace import _level0_chunks, _small_ome_zarr

PLUGIN = "napari-pathviz"


@pytest.fixture
def image():
    from skimage import data

    return np.ascontiguousarray(data.immunohistochemistry()[:512, :512])


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_a_slide_with_a_bad_chunk_opens_with_a_warning(
    make_napari_viewer, qtbot, tmp_path, image, notifications, damage
):
    path = _small_ome_zarr(tmp_path / "slide.ome.zarr", image)  # 256-px chunks, 2 levels
    first = _level0_chunks(path)[0]
    if damage == "corrupt":
        first.write_bytes(b"\x00garbage" * 7)
    else:
        first.unlink()
    viewer = make_napari_viewer()
    with qtbot.capture_exceptions() as exceptions:
        (layer,) = viewer.open(path, plugin=PLUGIN)
        shown = np.asarray(layer.data[0][:512, :512])
        qtbot.wait(200)
    assert exceptions == []
    assert layer.multiscale and layer.data[0].shape == image.shape
    expected = image.copy()
    expected[:256, :256] = 0  # the bad chunk, blank
    np.testing.assert_array_equal(shown, expected)
    warned = [m for m in notifications if "slide.ome.zarr: level 0" in m]
    assert len(warned) == 1 and "shown blank" in warned[0], notifications


def test_a_tiff_with_a_corrupt_tile_opens_with_a_warning(
    make_napari_viewer, qtbot, tmp_path, notifications
):
    import tifffile

    from conftest import write_pyramidal_tiff

    image = np.full((512, 768, 3), 200, np.uint8)  # JPEG-exact enough to compare: flat grey
    path = write_pyramidal_tiff(tmp_path / "scan.tif", image, levels=2)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[0], page.databytecounts[0]
    with open(path, "r+b") as f:  # the first tile's JPEG stream overwritten with noise
        f.seek(offset)
        f.write(np.random.default_rng(0).integers(0, 256, count, dtype=np.uint8).tobytes())
    viewer = make_napari_viewer()
    with qtbot.capture_exceptions() as exceptions:
        (layer,) = viewer.open(path, plugin=PLUGIN)
        shown = np.asarray(layer.data[0][:512, :768])
        qtbot.wait(200)
    assert exceptions == []
    assert (shown[:256, :256] == 0).all()  # the corrupt tile, blank
    assert np.abs(shown[256:, 256:].astype(int) - 200).max() <= 2  # the rest, real pixels
    warned = [m for m in notifications if "scan.tif: level 0" in m]
    assert len(warned) == 1 and "shown blank" in warned[0], notifications
