"""CLI gallery commands: --top N explains N patches at distinct places (or says why fewer),
--smooth blurs the gallery's maps as the napari widget does (the store keeps them as
computed), and every option of every command says what it does in --help."""

from __future__ import annotations

import argparse
import re

import numpy as np
import pytest

from conftest import run_cli
from napari_pathviz.attribution.stored import open_attributions
from napari_pathviz.cli import build_parser
from test_attribution import _cli_model_args


def test_every_option_of_every_command_has_help():
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [
        f"{name} {'/'.join(action.option_strings)}"
        for name, command in commands.choices.items()
        for action in command._actions
        if action.option_strings
        and not isinstance(action, argparse._HelpAction)
        and not (action.help or "").strip()
    ]
    assert not missing, missing
    shown = run_cli("shapley-plot", "--help").stdout
    assert re.search(r"-mth \{gradient,deep\}, --method \{gradient,deep\}\s+\S", shown)


@pytest.fixture(scope="module")
def demo():
    from napari_pathviz._demo import ensure_demo_data
    from napari_pathviz.patches import load_patches

    paths = ensure_demo_data()
    return paths, load_patches(paths["patches"]).df


def _block(df, x0: int, y0: int, side: int):
    """The demo's patches in a side x side block of neighbouring 64-px tiles."""
    inside = (df.x >= x0) & (df.x < x0 + 64 * side) & (df.y >= y0) & (df.y < y0 + 64 * side)
    return df[inside].reset_index(drop=True)


def _gradcam_top(demo, table, n: int, tmp_path, name: str):
    paths, _df = demo
    csv = tmp_path / f"{name}.csv"
    table.to_csv(csv, index=False)
    store = tmp_path / f"{name}.zarr"
    result = run_cli(
        "gradcam",
        *_cli_model_args(),
        "--slide",
        paths["slide"],
        "--patches",
        csv,
        "--top",
        str(n),
        "dab_positive",
        "-o",
        tmp_path / f"{name}.png",
        "--attributions-out",
        store,
    )
    assert result.returncode == 0, result.stderr
    _result, keys = open_attributions(store)
    return result, keys


def test_top_n_explains_n_distinct_places_in_a_block_of_neighbours(demo, tmp_path):
    _paths, df = demo
    block = _block(df, 192, 320, 5)  # 25 touching tiles: only 9 are apart from each other
    assert len(block) == 25
    result, keys = _gradcam_top(demo, block, 20, tmp_path, "block")
    assert len(keys) == 20, result.stderr
    xy = keys[["x", "y"]].to_numpy()
    assert len({tuple(p) for p in xy}) == 20
    for i in range(20):  # distinct places: no two tiles overlap
        gap = np.abs(xy[i] - np.delete(xy, i, axis=0)).max(axis=1)
        assert gap.min() >= 64
    # The best 9 that are apart come first; the rest are the next best, best first.
    ranked = block.sort_values("dab_positive", ascending=False, kind="stable")
    values = block.set_index(["x", "y"])["dab_positive"]
    chosen = values.loc[list(map(tuple, xy))].to_numpy()
    assert chosen.max() == ranked["dab_positive"].iat[0]
    assert "only" not in result.stderr


def test_top_n_says_so_when_fewer_places_exist(demo, tmp_path):
    _paths, df = demo
    small = _block(df, 192, 320, 5).iloc[:12]
    result, keys = _gradcam_top(demo, small, 20, tmp_path, "small")
    assert len(keys) < 20
    line = f"--top 20 dab_positive: only {len(keys)} of the 12 patches of"
    assert line in result.stderr, result.stderr


def _speckle(raw_png, smooth_png) -> tuple[float, float]:
    """Mean |Laplacian| (pixel-scale speckle) of each gallery where the two differ: their
    maps (the patch images and titles are the same in both)."""
    from PIL import Image
    from scipy import ndimage

    raw, smooth = (
        np.asarray(Image.open(p).convert("L"), np.float32) for p in (raw_png, smooth_png)
    )
    assert raw.shape == smooth.shape
    maps = ndimage.binary_dilation(np.abs(raw - smooth) > 8, iterations=3)
    assert maps.mean() > 0.02  # the maps differ, over a real part of the figure
    return tuple(float(np.abs(ndimage.laplace(g))[maps].mean()) for g in (raw, smooth))


def test_smooth_blurs_the_gallery_maps_and_keeps_the_store(demo, tmp_path):
    paths, _df = demo
    common = [
        "shapley-plot",
        *_cli_model_args(),
        "--slide",
        paths["slide"],
        "--patches",
        paths["patches"],
        "--ids",
        "3",
        "40",
        "-bs",
        "4",
        "-ns",
        "32",
        "--attributions-out",
        tmp_path / "maps.zarr",
    ]
    raw = run_cli(*common, "-o", tmp_path / "raw.png")
    assert raw.returncode == 0, raw.stderr
    stored_before = np.asarray(open_attributions(tmp_path / "maps.zarr")[0].maps)
    smooth = run_cli(*common, "--smooth", "1.5", "-o", tmp_path / "smooth.png")
    assert smooth.returncode == 0, smooth.stderr
    # The same maps (the store resumed, unchanged), drawn smoothed: far less speckle.
    np.testing.assert_array_equal(
        np.asarray(open_attributions(tmp_path / "maps.zarr")[0].maps), stored_before
    )
    speckle_raw, speckle_smooth = _speckle(tmp_path / "raw.png", tmp_path / "smooth.png")
    assert speckle_smooth < 0.6 * speckle_raw, (speckle_raw, speckle_smooth)
    bad = run_cli(*common, "--smooth", "-1", "-o", tmp_path / "bad.png")
    assert bad.returncode == 2 and "--smooth must be 0 or more" in bad.stderr
    assert not (tmp_path / "bad.png").exists()


def test_smooth_is_refused_for_a_cohort_rather_than_ignored(tmp_path):
    out = tmp_path / "cohort_out"
    result = run_cli(
        "gradcam",
        *_cli_model_args(),
        "--slide",
        tmp_path / "a.svs",
        tmp_path / "b.svs",
        "--patches",
        tmp_path / "patches",
        "--top",
        "2",
        "dab_positive",
        "--smooth",
        "1.5",
        "-o",
        out,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "--smooth: not for a cohort (its galleries show the maps as computed); explain one "
            "slide at a time to smooth its gallery"
        )
    )
    assert not out.exists()
