"""`pathviz plot-embeddings` and `pathviz plot-image-umap-embeddings` end to end on the demo data:
files on disk, what they hold, and exit status 2 with one stderr line on bad input.

Commands that run UMAP run in-process (numba compiles umap-learn once per process); bad input,
which fails before UMAP, runs the installed console script as a user would.
"""

from __future__ import annotations

import io
import re
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import run_cli
from napari_pathviz._demo import DEMO_SLIDE_ID, demo_embeddings_path, ensure_demo_data
from napari_pathviz.cli import main


def run_main(*args) -> tuple[int, str, str]:
    """main() in this process, with its stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def error_lines(stderr: str) -> list[str]:
    """stderr without tqdm's cleared progress bars (carriage-return redraws)."""
    return [line for line in stderr.split("\n") if line.strip() and "\r" not in line]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("pathviz-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATHVIZ_CACHE_DIR", str(path))
        mp.setenv("NUMBA_CACHE_DIR", str(path / "numba"))
        yield path


@pytest.fixture(scope="module")
def demo():
    paths = ensure_demo_data()
    return {
        "embeddings": demo_embeddings_path(),
        "patches": paths["patches"],
        "slide": paths["slide"],
        "table": pd.read_parquet(paths["patches"]),
    }


@pytest.fixture(scope="module")
def plotted(cache_dir, demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("plot")
    code, stdout, stderr = run_main(
        "plot-embeddings",
        "-i",
        demo["embeddings"],
        "--patches",
        demo["patches"],
        "-a",
        "annotation",
        "-rb",
        "background",
        "-ma",
        "0.5",
        "--components",
        "2",
        "--random-state",
        "0",
        "--coords-out",
        out / "umap.csv",
        "--quality",
        "-o",
        out / "umap.html",
    )
    return {"code": code, "stdout": stdout, "stderr": stderr, "out": out}


def test_plot_embeddings_writes_html_and_coordinates(plotted, demo):
    assert plotted["code"] == 0, plotted["stderr"]
    assert error_lines(plotted["stderr"]) == []
    out = plotted["out"]
    coords = pd.read_csv(out / "umap.csv")
    assert list(coords.columns) == ["ID", "x", "y", "patch_size", "umap_0", "umap_1"]
    kept = demo["table"][demo["table"]["background"] <= 0.5]
    assert len(coords) == len(kept) and len(kept) < len(demo["table"])
    assert set(zip(coords["x"], coords["y"], strict=True)) == set(
        zip(kept["x"], kept["y"], strict=True)
    )
    assert (coords["ID"] == DEMO_SLIDE_ID).all() and (coords["patch_size"] == 64).all()
    assert np.isfinite(coords[["umap_0", "umap_1"]].to_numpy()).all()
    assert coords[["umap_0", "umap_1"]].std().min() > 0.1

    html = (out / "umap.html").read_text()
    assert "plotly" in html and len(html) > 1_000_000  # plotly.js is embedded: opens offline
    row = coords.iloc[len(coords) // 2]
    assert f"{DEMO_SLIDE_ID} x={row['x']} y={row['y']} size=64" in html
    assert "annotation: dab_positive" in html
    assert "coloured by annotation" in html and f"({len(kept)} patches)" in html


def test_plot_embeddings_prints_quality(plotted):
    lines = plotted["stdout"].splitlines()
    assert lines[0].endswith("umap.html") and lines[1].endswith("umap.csv")
    match = re.fullmatch(
        r"trustworthiness \(k=15, (\d+) patches\): ([\d.]+); k-NN preservation: ([\d.]+)",
        lines[2],
    )
    assert match, lines
    assert int(match[1]) == len(pd.read_csv(plotted["out"] / "umap.csv"))
    assert 0.8 < float(match[2]) <= 1.0 and 0.0 < float(match[3]) <= 1.0


def test_mosaic_from_a_folder_of_slides(plotted, demo, tmp_path):
    # Same embeddings and UMAP parameters as the plot: the coordinates come from the cache.
    out = tmp_path / "mosaic.png"
    code, stdout, stderr = run_main(
        "plot-image-umap-embeddings",
        "-e",
        demo["embeddings"],
        "--patches",
        demo["patches"],
        "-rb",
        "background",
        "-ma",
        "0.5",
        "--random-state",
        "0",
        "-i",
        demo["slide"].parent,
        "-sc",
        "dab_positive",
        "-o",
        out,
        "--canvas",
        "512",
        "--raw",  # the bare canvas: its size and content are checked below
    )
    assert code == 0, stderr
    assert stdout.strip() == str(out)
    image = np.asarray(Image.open(out))
    assert image.shape == (512, 512, 3)
    drawn = (image != 255).any(axis=2)
    assert 0.05 < drawn.mean() < 0.95  # thumbnails, and white canvas between them


def test_mosaic_from_one_slide(cache_dir, demo, tmp_path):
    out = tmp_path / "deep" / "mosaic.png"
    code, _, stderr = run_main(
        "plot-image-umap-embeddings",
        "-e",
        demo["embeddings"],
        "-i",
        demo["slide"],
        "-o",
        out,
        "--canvas",
        "300",
        "-z",
        "0.125",
        "-nn",
        "10",
    )
    assert code == 0, stderr
    # The default output is a figure: the canvas with UMAP axes, a title and an annotation
    # key around it, so larger than the canvas.
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape[0] > 300 and image.shape[1] > 300
    assert (image != 255).any(axis=2).mean() > 0.05


def test_dropped_rows_are_warnings_and_3d_works(cache_dir, tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    table = pd.DataFrame({"ID": "s", "x": np.arange(n) * 32, "y": 0, "patch_size": 32})
    feats = np.concatenate([rng.normal(0, 1, (n // 2, 8)), rng.normal(8, 1, (n // 2, 8))])
    feats[5, 3] = np.nan
    for j in range(8):
        table[f"feat_{j}"] = feats[:, j]
    table.to_parquet(tmp_path / "emb.parquet", index=False)
    code, _, stderr = run_main(
        "plot-embeddings",
        "-i",
        tmp_path / "emb.parquet",
        "-o",
        tmp_path / "u.html",
        "-nn",
        "8",
        "--coords-out",
        tmp_path / "u.parquet",
    )
    assert code == 0, stderr
    assert error_lines(stderr) == [
        f"pathviz plot-embeddings: warning: {tmp_path / 'emb.parquet'}: dropped 1 rows with "
        "NaN or inf features"
    ]
    coords = pd.read_parquet(tmp_path / "u.parquet")
    assert list(coords.columns[-3:]) == ["umap_0", "umap_1", "umap_2"]
    assert len(coords) == n - 1 and 5 * 32 not in coords["x"].tolist()
    assert '"type":"scatter3d"' in (tmp_path / "u.html").read_text()


@pytest.fixture
def bad_inputs(tmp_path):
    import torch

    emb = pd.DataFrame(np.zeros((3, 4)))
    emb["ID"] = "s"
    torch.save({"embeddings": emb}, tmp_path / "embeddings.pkl")
    np.save(tmp_path / "cube.npy", np.zeros((3, 4, 2), np.float32))
    np.save(tmp_path / "flat.npy", np.zeros((3, 4), np.float32))
    keys = pd.DataFrame({"ID": "s", "x": [0, 64, 128], "y": 0, "patch_size": 64})
    keys.to_csv(tmp_path / "keys.csv", index=False)
    table = keys.assign(feat_0=[0.0, 1.0, 2.0], feat_1=[1.0, 0.0, 1.0], glass=0.0)
    table.to_parquet(tmp_path / "emb.parquet", index=False)
    (tmp_path / "slides").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["plot-embeddings", "-i", "{tmp}/embeddings.pkl", "-o", "{tmp}/u.html"],
            "{tmp}/embeddings.pkl: is a pickle, which can run code when loaded; pass --trust-pickle",
        ),
        (
            ["plot-embeddings", "-i", "{tmp}/missing.parquet", "-o", "{tmp}/u.html"],
            "{tmp}/missing.parquet: no such file or directory",
        ),
        (
            ["plot-embeddings", "-i", "{tmp}/emb.parquet", "-o", "{tmp}/u.html", "-rb", "tumor"],
            "--remove_background_annotation: no column 'tumor'",
        ),
        (
            [
                "plot-embeddings",
                "-i",
                "{tmp}/cube.npy",
                "--keys",
                "{tmp}/keys.csv",
                "-o",
                "{tmp}/u.html",
            ],
            "{tmp}/cube.npy: embeddings must be a 2-D (patches x features) array, found shape "
            "(3, 4, 2)",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(bad_inputs, args, message):
    argv = [a.format(tmp=bad_inputs) for a in args]
    result = run_cli(*argv, env={"PATHVIZ_CACHE_DIR": str(bad_inputs / "cache")})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"pathviz {argv[0]}: error: ")
    assert message.format(tmp=bad_inputs) in lines[0]
    assert result.stdout == "" and not (bad_inputs / "u.html").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plot-embeddings", "-i", "{tmp}/flat.npy"], "give the key table (--keys)"),
        (
            ["plot-embeddings", "-i", "{tmp}/emb.parquet", "-rb", "glass", "-ma", "2"],
            "-ma/--max_background_area must be a number from 0 to 1, got 2",
        ),
        (["plot-embeddings", "-i", "{tmp}/emb.parquet", "--pca", "x"], "--pca must be auto, off"),
        (
            ["plot-embeddings", "-i", "{tmp}/emb.parquet", "-nn", "5"],
            "UMAP with 5 neighbours needs more than 5 patches; 3 given",
        ),
        (
            ["plot-image-umap-embeddings", "-e", "{tmp}/emb.parquet", "-i", "{tmp}/slides"],
            "{tmp}/slides: no slide file for ID 's'",
        ),
    ],
)
def test_more_bad_input_in_process(bad_inputs, cache_dir, args, message):
    out = "out.png" if args[0] == "plot-image-umap-embeddings" else "out.html"
    argv = [a.format(tmp=bad_inputs) for a in args] + ["-o", str(bad_inputs / out)]
    code, stdout, stderr = run_main(*argv)
    assert code == 2
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"pathviz {argv[0]}: error: ")
    assert message.format(tmp=bad_inputs) in lines[0] and stdout == ""


def test_patch_size_option_serves_a_key_table_without_sizes(cache_dir, tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "emb.npy", rng.normal(size=(30, 4)).astype(np.float32))
    pd.DataFrame({"ID": "s", "x": np.arange(30) * 64, "y": 0}).to_csv(
        tmp_path / "keys.csv", index=False
    )
    code, _, stderr = run_main(
        "plot-embeddings",
        "-i",
        tmp_path / "emb.npy",
        "--keys",
        tmp_path / "keys.csv",
        "--patch-size",
        "64",
        "-nn",
        "5",
        "-o",
        tmp_path / "u.html",
    )
    assert code == 0, stderr
