"""Inputs that used to give silently wrong results: another slide's patch rows, slides that are
not uint8, models that output NaN, TIFF tiles that are empty or corrupt, and slide headers that
claim absurd sizes. Every file here is written by the test itself."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
import zarr
from torch import nn

from napari_pathviz.errors import PathvizError
from napari_pathviz.inference import extract
from napari_pathviz.models import ModelSpec, pixels_to_unit
from napari_pathviz.patches import PatchTable, patches_for_slide
from napari_pathviz.slide import open_slide

# --- patch rows of another slide ----------------------------------------------------------


@pytest.fixture
def small_slide(tmp_path, tissue_rgb):
    path = tmp_path / "case01.zarr"
    zarr.create_array(str(path), data=tissue_rgb[:256, :256], chunks=(128, 128, 3))
    return open_slide(path)


def _grid(ids) -> pd.DataFrame:
    return pd.DataFrame({"ID": ids, "x": [0, 64, 128, 0], "y": [0, 0, 64, 128], "patch_size": 64})


def test_a_table_of_other_slides_is_refused_naming_ids_found_and_expected(small_slide):
    df = _grid(["caseA", "caseB", "caseA", "caseC"])
    with pytest.raises(PathvizError) as err:
        patches_for_slide(df, "patches.csv", small_slide)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("patches.csv: no rows for slide 'case01'")
    assert "'caseA', 'caseB', 'caseC'" in message and "--slide-id" in message


def test_many_foreign_ids_are_summarised(small_slide):
    df = pd.concat([_grid([f"s{i}"] * 4) for i in range(9)])
    with pytest.raises(PathvizError, match=r"'s0', 's1', 's2', 's3', 's4' and 4 more"):
        patches_for_slide(df, "patches.csv", small_slide)


def test_slide_id_maps_the_table_explicitly(small_slide):
    df = _grid(["caseA", "caseB", "caseA", "caseB"])
    table = patches_for_slide(df, "patches.csv", small_slide, slide_id="caseA")
    assert table.df["ID"].tolist() == ["caseA", "caseA"]
    assert table.df["x"].tolist() == [0, 128] and table.df["y"].tolist() == [0, 64]
    with pytest.raises(PathvizError, match=r"no patches for slide ID 'caseZ' \(IDs present: "):
        patches_for_slide(df, "patches.csv", small_slide, slide_id="caseZ")


def test_matching_rows_are_kept_and_an_id_less_table_is_this_slides(small_slide):
    df = _grid(["case01", "other", "case01", "other"])
    assert len(patches_for_slide(df, "patches.csv", small_slide)) == 2
    no_ids = patches_for_slide(df.drop(columns="ID"), "patches.csv", small_slide)
    assert no_ids.df["ID"].tolist() == ["case01"] * 4


@pytest.mark.parametrize("value", [2**64 - 1, 2**63, 2**53 + 2])
def test_uint64_coordinates_too_large_are_one_line(value):
    df = pd.DataFrame(
        {
            "x": np.array([0, value], np.uint64),
            "y": np.array([0, 5], np.uint64),
            "patch_size": np.array([32, 32], np.uint64),
        }
    )
    with pytest.raises(PathvizError, match=r"^t\.parquet: row 1: x \d+ is too large"):
        PatchTable.from_frame(df, "t.parquet")


def test_uint64_coordinates_in_range_work(tmp_path):
    df = pd.DataFrame(
        {
            "x": np.array([0, 64], np.uint64),
            "y": np.array([0, 5], np.uint64),
            "patch_size": np.array([32, 32], np.uint64),
        }
    )
    path = tmp_path / "t.parquet"
    df.to_parquet(path)
    table = PatchTable.from_frame(pd.read_parquet(path), str(path))
    assert table.df["x"].tolist() == [0, 64] and table.df["x"].dtype == np.int64
    table.check_inside(100, 100)
    with pytest.raises(PathvizError, match="lies outside the slide"):
        table.check_inside(50, 50)


# --- input scaling by dtype ------------------------------------------------------------------


def test_pixels_are_scaled_by_dtype(tissue_rgb):
    patches = tissue_rgb[None, :32, :32]
    expected = torch.from_numpy(patches.astype(np.float64) / 255).permute(0, 3, 1, 2).float()
    as_uint16 = patches.astype(np.uint16) * 257  # 255 * 257 = 65535: the same fractions
    as_float = (patches / 255).astype(np.float32)
    for x in (patches, as_uint16, as_float):
        torch.testing.assert_close(pixels_to_unit(x), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("patches", "message"),
    [
        (np.full((1, 4, 4, 3), 200.0, np.float32), r"float32 with values from 200 to 200"),
        (np.full((1, 4, 4, 3), -0.5, np.float64), r"float64 with values from -0.5"),
        (np.full((1, 4, 4, 3), np.nan, np.float32), r"float32 with values from nan"),
        (np.full((1, 4, 4, 3), 7, np.int32), r"pixels are int32; models take uint8, uint16"),
    ],
)
def test_unscalable_pixels_are_refused(patches, message):
    with pytest.raises(PathvizError, match=message):
        ModelSpec(nn.Identity(), "m.pt").preprocess(patches)


class BrightnessModel(nn.Module):
    """Two logits from the mean pixel value: class 1 when the input is brighter than 0.5 (on
    [0, 1] inputs), so feeding 0-255 values, or 0-1 values as if they were 0-255, flips it."""

    def __init__(self):
        super().__init__()
        self.features = nn.Flatten()
        self.head = nn.Linear(1, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[-10.0], [10.0]]))
            self.head.bias.copy_(torch.tensor([5.0, -5.0]))

    def forward(self, x):
        return self.head(self.features(x).mean(dim=1, keepdim=True))


def _slide_of(tmp_path, name, image):
    path = tmp_path / f"{name}.zarr"
    zarr.create_array(str(path), data=image, chunks=(64, 64, 3))
    return open_slide(path)


def test_float_and_uint16_slides_give_the_uint8_predictions(tmp_path):
    # Left half dark (0.2), right half bright (0.8): patch classes 0 then 1.
    image = np.zeros((64, 128, 3), np.uint8)
    image[:, :64], image[:, 64:] = 51, 204
    versions = {
        "u8": image,
        "u16": image.astype(np.uint16) * 257,
        "f32": (image / 255).astype(np.float32),
    }
    results = {}
    for name, pixels in versions.items():
        slide = _slide_of(tmp_path, name, pixels)
        table = PatchTable.from_frame(
            pd.DataFrame({"x": [0, 64], "y": [0, 0], "patch_size": 64}), "t.csv", slide_id=name
        )
        spec = ModelSpec(BrightnessModel().eval(), "brightness.pt")
        results[name] = extract(
            slide, table, spec, store=tmp_path / f"{name}.store.zarr", device="cpu", workers=1
        )
    for name, result in results.items():
        assert result["y_pred"].tolist() == [0, 1], name
        np.testing.assert_allclose(result["prob_1"], results["u8"]["prob_1"], atol=1e-6)
    # 0.8 -> logit difference 2 * (10 * 0.8 - 5) = 6.
    assert results["f32"]["prob_1"].iloc[1] == pytest.approx(1 / (1 + np.exp(-6.0)), abs=1e-5)


# --- non-finite model outputs -----------------------------------------------------------------


class NanForBrightPatches(nn.Module):
    """Logits that are NaN for patches brighter than 0.5, finite otherwise."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1, 2)

    def forward(self, x):
        brightness = x.mean(dim=(1, 2, 3)).unsqueeze(1)
        logits = self.fc(brightness)
        return torch.where(brightness > 0.5, torch.full_like(logits, float("nan")), logits)


def test_nan_outputs_stop_extraction_naming_the_patches(tmp_path):
    image = np.full((64, 256, 3), 40, np.uint8)
    image[:, 128:192] = 230  # the patches at x=128 and x=160
    slide = _slide_of(tmp_path, "nan_case", image)
    df = pd.DataFrame({"x": [0, 32, 64, 96, 128, 160, 192, 224], "y": 0, "patch_size": 32})
    table = PatchTable.from_frame(df, "t.csv", slide_id="nan_case")
    spec = ModelSpec(NanForBrightPatches().eval(), "nan.pt")
    with pytest.raises(PathvizError) as err:
        extract(
            slide,
            table,
            spec,
            store=tmp_path / "nan.store.zarr",
            device="cpu",
            workers=1,
            batch_size=3,
            embeddings=False,
        )
    message = str(err.value)
    assert "\n" not in message
    # Batch 2 holds rows 3-5: x=96 is finite, x=128 and x=160 are not.
    assert "NaN or infinite for 2 of 3 patches" in message
    assert "nan_case x=128 y=0; nan_case x=160 y=0" in message


def test_nan_outputs_stop_attributions_naming_the_patches():
    from napari_pathviz.attribution.stored import explain

    x = torch.full((5, 3, 16, 16), 0.2)
    x[3] = 0.9
    keys = pd.DataFrame({"ID": "s", "x": [0, 16, 32, 48, 64], "y": 7, "patch_size": 16})
    model = NanForBrightPatches().eval()
    dark = torch.full((4, 3, 16, 16), 0.1)
    with pytest.raises(
        PathvizError, match=r"NaN or infinite for 1 explained patches \(s x=48 y=7\)"
    ):
        explain(model, x, "gradient", background=dark, keys=keys, chunk_size=2, n_samples=8)
    bright = torch.full((4, 3, 16, 16), 0.9)
    with pytest.raises(PathvizError, match=r"among the background \(reference\) patches"):
        explain(model, x[:3], "gradient", background=bright, keys=keys.iloc[:3], n_samples=8)


# --- TIFF tiles that are empty, cut off or corrupt ---------------------------------------------


def _jpeg_tiff(path, image):
    tifffile.imwrite(
        path, image, tile=(256, 256), photometric="rgb", compression="jpeg", metadata=None
    )
    return path


def _rewrite_tag(path, tag, index, value, page=0):
    """Overwrites one entry of a page's TileOffsets or TileByteCounts in the file's IFD."""
    with tifffile.TiffFile(path, mode="r+b") as tif:
        p = tif.pages[page] if isinstance(page, int) else page(tif)
        values = list(p.tags[tag].value)
        values[index] = value
        p.tags[tag].overwrite(values)


@pytest.mark.parametrize(
    ("tag", "what"), [("TileByteCounts", "byte count 0"), ("TileOffsets", "offset 0")]
)
def test_check_reports_zero_length_tiles(tmp_path, tissue_rgb, tag, what):
    from napari_pathviz.slide_check import check_slide

    path = _jpeg_tiff(tmp_path / "scan.tif", tissue_rgb)
    _rewrite_tag(path, tag, 8, 0)  # 6 tiles across: tile 8 is row 1, column 2
    slide = open_slide(path)
    assert slide.read_region(256, 512, 256, 256).max() == 0  # read silently as black
    for decode_all in (False, True):
        with pytest.raises(PathvizError) as err:
            check_slide(slide, decode_all=decode_all)
        assert str(err.value) == (
            f"{path}: 1 bad tiles: level 0: tile 8 at x=512, y=256 is empty ({what})"
        )


def test_check_names_the_level_of_a_bad_tile_in_a_pyramid(tmp_path, tissue_rgb):
    from conftest import write_pyramidal_tiff
    from napari_pathviz.slide_check import check_slide

    path = write_pyramidal_tiff(tmp_path / "pyramid.tif", tissue_rgb, levels=3)
    _rewrite_tag(path, "TileByteCounts", 1, 0, page=lambda tif: tif.pages[0].pages[0])
    with pytest.raises(PathvizError, match=r"level 1: tile 1 at x=256, y=0 is empty"):
        check_slide(open_slide(path))


def test_decode_all_finds_a_cut_off_jpeg_tile(tmp_path, tissue_rgb):
    from napari_pathviz.slide_check import check_slide

    path = _jpeg_tiff(tmp_path / "cut.tif", tissue_rgb)
    with tifffile.TiffFile(path) as tif:
        count = int(tif.pages[0].databytecounts[7])
    _rewrite_tag(path, "TileByteCounts", 7, count // 2)
    slide = open_slide(path)
    assert check_slide(slide) == 24  # libjpeg decodes half a tile without an error
    with pytest.raises(PathvizError) as err:
        check_slide(slide, decode_all=True)
    assert str(err.value) == (
        f"{path}: level 0: tile 7 at x=256, y=256 is truncated (its JPEG data has no end marker)"
    )


def test_decode_all_finds_a_tile_of_the_wrong_size(tmp_path, tissue_rgb):
    from napari_pathviz.slide_check import check_slide

    path = _jpeg_tiff(tmp_path / "sof.tif", tissue_rgb)
    with tifffile.TiffFile(path) as tif:
        offset, count = int(tif.pages[0].dataoffsets[2]), int(tif.pages[0].databytecounts[2])
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0", offset, offset + count)
    data[sof + 5 : sof + 7] = (128).to_bytes(2, "big")  # the frame's height: 256 -> 128
    path.write_bytes(bytes(data))
    with pytest.raises(PathvizError, match=r"level 0: tile 2 at x=512, y=0 does not decode .*128"):
        check_slide(open_slide(path), decode_all=True)


def test_decode_all_on_good_files_decodes_every_tile(tmp_path, tissue_rgb):
    from conftest import write_pyramidal_tiff
    from napari_pathviz.slide_check import check_slide

    flat = _jpeg_tiff(tmp_path / "good.tif", tissue_rgb)
    seen = []
    assert check_slide(open_slide(flat), lambda d, t: seen.append((d, t)), decode_all=True) == 24
    assert seen[-1] == (24, 24)
    pyramid = write_pyramidal_tiff(tmp_path / "pyramid.tif", tissue_rgb, levels=3)
    # 4 x 6 tiles, then 2 x 3, then 1 x 2.
    assert check_slide(open_slide(pyramid), decode_all=True) == 24 + 6 + 2


def test_pathviz_check_cli_reports_a_bad_tile_in_one_line(tmp_path, tissue_rgb):
    from conftest import run_cli

    path = _jpeg_tiff(tmp_path / "scan.tif", tissue_rgb)
    assert run_cli("check", path, "--decode-all").returncode == 0
    _rewrite_tag(path, "TileByteCounts", 0, 0)
    done = run_cli("check", path, "--decode-all")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"pathviz check: error: {path}: 1 bad tiles: level 0: tile 0 at x=0, y=0 is empty "
        "(byte count 0)"
    ]


# --- absurd headers, empty and odd slides --------------------------------------------------


def test_an_absurd_header_is_refused_before_anything_is_built(tmp_path):
    import tracemalloc

    path = tmp_path / "huge.zarr"
    zarr.create_array(str(path), shape=(10**9, 10**9, 3), chunks=(512, 512, 3), dtype="uint8")
    tracemalloc.start()
    try:
        with pytest.raises(PathvizError) as err:
            open_slide(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(err.value).startswith(
        f"{path}: 1000000000 x 1000000000 px (1e+18 pixels) is over the limit of 1e+11"
    )
    assert peak < 20e6


def test_a_large_single_array_opens_without_a_task_per_chunk(tmp_path):
    import tracemalloc

    # 100,000 x 100,000 px in 512-px chunks: 38,000 chunks, 9 levels. Building the coarser
    # levels with dask operations took 6 s and 290 MB here.
    path = tmp_path / "large.zarr"
    zarr.create_array(str(path), shape=(10**5, 10**5, 3), chunks=(512, 512, 3), dtype="uint8")
    tracemalloc.start()
    try:
        slide = open_slide(path, allow_missing_chunks=True)
        slide.describe()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(slide.levels) == 9 and slide.levels[8].shape == (390, 390, 3)
    assert peak < 20e6
    assert slide.read_region(0, 0, 4, 4, level=8).shape == (4, 4, 3)


def test_the_pixel_limit_is_configurable(tmp_path, tissue_rgb, monkeypatch):
    path = tmp_path / "slide.zarr"
    zarr.create_array(str(path), data=tissue_rgb, chunks=(256, 256, 3))
    monkeypatch.setenv("PATHVIZ_MAX_PIXELS", "1e6")
    with pytest.raises(
        PathvizError, match=r"1400 x 1000 px \(1\.4e\+06 pixels\) is over the limit of 1e\+06"
    ):
        open_slide(path)
    monkeypatch.setenv("PATHVIZ_MAX_PIXELS", "1.4e6")
    assert open_slide(path).shape == (1000, 1400, 3)
    monkeypatch.setenv("PATHVIZ_MAX_PIXELS", "lots")
    with pytest.raises(PathvizError, match=r"PATHVIZ_MAX_PIXELS='lots': expected a positive"):
        open_slide(path)


@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [
        ((0, 0, 3), "uint8", r"level 0 is empty \(shape 0 x 0 x 3, axes 'yxc'\)"),
        ((64, 0, 3), "uint8", r"level 0 is empty \(shape 64 x 0 x 3"),
        ((64, 64, 3), "complex128", r"pixels of type complex128 are not supported"),
        ((64, 64, 3), "int32", r"pixels of type int32 are not supported"),
        ((64, 64, 3), "bool", r"pixels of type bool are not supported"),
    ],
)
def test_empty_and_odd_zarrs_are_one_line_errors(tmp_path, shape, dtype, message):
    from conftest import run_cli

    path = tmp_path / "odd.zarr"
    zarr.create_array(str(path), shape=shape, chunks=(32, 32, 3), dtype=dtype)
    with pytest.raises(PathvizError, match=message):
        open_slide(path)
    if dtype == "uint8" and shape[0] == 0:
        done = run_cli("info", path)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
        assert "level 0 is empty" in done.stderr


def test_lazy_levels_of_a_float_slide_match_the_dask_means(tmp_path, tissue_rgb):
    import dask.array as da

    from napari_pathviz.io.pyramid import lazy_levels

    image = (tissue_rgb / 255).astype(np.float32)
    path = tmp_path / "float.zarr"
    zarr.create_array(str(path), data=image, chunks=(256, 256, 3))
    slide = open_slide(path)
    reference = lazy_levels(da.from_array(image, chunks=(256, 256, 3)))
    assert len(slide.levels) == len(reference) == 3
    for ours, theirs in zip(slide.levels, reference, strict=True):
        np.testing.assert_array_equal(ours.compute(), theirs.compute())
    np.testing.assert_array_equal(
        slide.read_region(10, 20, 30, 40, level=2), reference[2][10:40, 20:60].compute()
    )


def test_slide_id_maps_a_table_named_otherwise(tmp_path, capsys):
    """A table calling the slide by another name is refused by default and used with
    --slide-id, on every command that reads patches of one slide."""
    import numpy as np
    import pandas as pd

    from napari_pathviz._demo import ensure_demo_data
    from napari_pathviz.cli import main

    paths = ensure_demo_data()
    table = pd.read_parquet(paths["patches"]).assign(ID="scan_0042")
    table["prob_tumour"] = np.linspace(0, 1, len(table))
    renamed = tmp_path / "renamed.csv"
    table.to_csv(renamed, index=False)
    command = ["plot-predictions", "--slide", str(paths["slide"]), "-p", str(renamed)]
    assert main([*command, "-o", str(tmp_path / "a.png")]) == 2
    assert "scan_0042" in capsys.readouterr().err
    assert main([*command, "-o", str(tmp_path / "b.png"), "--slide-id", "scan_0042"]) == 0
    assert (tmp_path / "b.png").stat().st_size > 10_000
    for name in ("extract", "shapley-plot", "gradcam", "sanity-check"):
        with pytest.raises(SystemExit):
            main([name, "--help"])
        assert "--slide-id" in capsys.readouterr().out
