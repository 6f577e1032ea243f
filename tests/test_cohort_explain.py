"""shapley-plot and gradcam over a cohort on dask.distributed: the top N patches of each slide or
of the cohort, maps equal to the single-slide command's, one resumable store per slide, a
broken slide failing alone, a gallery per slide and one for the cohort."""

from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import write_pyramidal_tiff, write_svs
from napari_pathviz.attribution.stored import open_attributions
from napari_pathviz.cli import main
from napari_pathviz.cohort import ModelRecipe, run_cohort, slide_key

HEIGHT, WIDTH, SIZE = 320, 384, 64
WEIGHTS = str(resources.files("napari_pathviz") / "data" / "demo_model.pt")  # card beside it
COLUMN = "prob_dab_positive"


@pytest.fixture(scope="module")
def cluster():
    """One in-process cluster (threads: cheap to start) used as --scheduler ADDRESS. One thread:
    CPython 3.11's ast module is not thread-safe (model_digest's inspect.getsource in two
    threads at once can raise SystemError "AST constructor recursion depth mismatch")."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        silence_logs=logging.CRITICAL,
    ) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, tissue_rgb, cluster) -> dict:
    """Three slides (SVS, pyramidal TIFF), each a different piece of tissue, and their
    predictions from the cohort extract (a folder with summary.csv and one table a slide)."""
    folder = tmp_path_factory.mktemp("cohort")
    slides_dir = folder / "slides"
    slides_dir.mkdir()
    slides = {}
    for k, name in enumerate(("alpha", "beta", "gamma")):
        image = np.ascontiguousarray(tissue_rgb[40 * k : 40 * k + HEIGHT, 90 * k : 90 * k + WIDTH])
        writer = write_svs if k == 1 else write_pyramidal_tiff
        slides[name] = writer(slides_dir / f"{name}.{'svs' if k == 1 else 'tif'}", image)
    ys, xs = np.meshgrid(
        np.arange(0, HEIGHT - SIZE + 1, SIZE), np.arange(0, WIDTH - SIZE + 1, SIZE)
    )
    rows = pd.concat(
        [
            pd.DataFrame({"ID": i, "x": xs.ravel(), "y": ys.ravel(), "patch_size": SIZE})
            for i in slides
        ],
        ignore_index=True,
    )
    rows.to_csv(folder / "patches.csv", index=False)
    predictions = folder / "predictions"
    summary = run_cohort(
        list(slides.values()),
        ModelRecipe(path=WEIGHTS),
        predictions,
        patches=folder / "patches.csv",
        scheduler=cluster,
        device="cpu",
        embeddings=False,
    )
    assert (summary["status"] == "done").all(), summary["error"].tolist()
    return {"dir": folder, "slides_dir": slides_dir, "slides": slides, "predictions": predictions}


def _prediction_table(cohort: dict, name: str) -> Path:
    return cohort["predictions"] / f"{slide_key(cohort['slides'][name])}.parquet"


def _maps(store: str | Path) -> tuple[np.ndarray, pd.DataFrame]:
    result, keys = open_attributions(store)
    return np.asarray(result.maps[:]), keys


def _single(cohort, name: str, command: str, selection: list[str], out: Path, *extra) -> Path:
    """The single-slide command on one slide of the cohort; returns its store."""
    store = out.with_suffix(".zarr")
    rc = main(
        [
            command,
            "-m",
            WEIGHTS,
            "--slide",
            str(cohort["slides"][name]),
            "--patches",
            str(_prediction_table(cohort, name)),
            *selection,
            "--device",
            "cpu",
            "--attributions-out",
            str(store),
            "-o",
            str(out),
            *extra,
        ]
    )
    assert rc == 0
    return store


def test_per_slide_top_matches_the_single_slide_command_and_resumes(cohort, cluster, tmp_path):
    out = tmp_path / "per_slide"
    args = [
        "gradcam",
        "-m",
        WEIGHTS,
        "--slide",
        str(cohort["slides_dir"]),
        "--patches",
        str(cohort["predictions"]),
        "--top",
        "2",
        COLUMN,
        "--per-slide",
        "--scheduler",
        cluster,
        "--device",
        "cpu",
        "-o",
        str(out),
    ]
    assert main(args) == 0
    summary = pd.read_csv(out / "summary.csv", dtype={"ID": str})
    assert summary["ID"].tolist() == ["alpha", "beta", "gamma"]
    assert summary["status"].tolist() == ["done"] * 3
    assert summary["patches"].tolist() == [2, 2, 2]
    assert summary["computed"].tolist() == [2, 2, 2]
    for path in cohort["slides"].values():
        assert (out / f"{slide_key(path)}.png").stat().st_size > 5000
    top = pd.read_csv(out / "cohort_top.csv", dtype={"ID": str})
    assert sorted(top["ID"].tolist()) == ["alpha", "alpha", "beta", "beta", "gamma", "gamma"]
    assert (np.diff(top[COLUMN].to_numpy()) <= 0).all()  # ranked across slides
    assert (out / "cohort.png").stat().st_size > 10000

    # Each slide's top 2 and maps are those of the single-slide command's --top 2.
    for name in ("alpha", "gamma"):
        store = summary.set_index("ID").loc[name, "store"]
        maps, keys = _maps(store)
        single_maps, single_keys = _maps(
            _single(cohort, name, "gradcam", ["--top", "2", COLUMN], tmp_path / f"{name}.png")
        )
        pd.testing.assert_frame_equal(keys, single_keys)
        assert maps.shape == (2, SIZE, SIZE) and np.abs(maps).max() > 0
        np.testing.assert_allclose(maps, single_maps, rtol=1e-5, atol=1e-7)

    # A rerun reopens every store and computes nothing: no chunk of the maps is written again.
    written = {
        p: p.stat().st_mtime_ns
        for store in summary["store"]
        for p in (Path(store) / "maps").rglob("*")
        if p.is_file() and p.name != "zarr.json"
    }
    assert written
    assert main(args) == 0
    again = pd.read_csv(out / "summary.csv")
    assert again["computed"].tolist() == [0, 0, 0]
    assert again["resumed"].tolist() == [2, 2, 2]
    assert again["store"].tolist() == summary["store"].tolist()
    assert {p: p.stat().st_mtime_ns for p in written} == written


def test_cohort_wide_top_with_a_broken_slide(cohort, tmp_path):
    """A slides table with a fourth slide whose file is not a slide and holds the cohort's best
    patch: it fails alone (one summary line, exit 2) on the default LocalCluster, and the rest of
    the cohort's top 3 is explained with the maps the single-slide command gives (same seed)."""
    broken = cohort["slides_dir"].parent / "broken.svs"
    broken.write_bytes(b"not a slide at all" * 100)
    table = pd.DataFrame(
        {
            "ID": [*cohort["slides"], "broken"],
            "path": [str(p) for p in cohort["slides"].values()] + [str(broken)],
        }
    )
    table.to_csv(tmp_path / "slides.csv", index=False)
    frames = [pd.read_parquet(_prediction_table(cohort, n)) for n in cohort["slides"]]
    patches = pd.concat(frames, ignore_index=True)
    best = patches[COLUMN].max()
    extra = pd.DataFrame(
        {"ID": ["broken"], "x": [0], "y": [0], "patch_size": [SIZE], COLUMN: [best + 1]}
    )
    pd.concat([patches, extra], ignore_index=True).to_parquet(tmp_path / "patches.parquet")
    out = tmp_path / "wide"
    shap = ["-mth", "gradient", "-ns", "8", "-bs", "4", "--seed", "3", "--device", "cpu"]
    rc = main(
        [
            "shapley-plot",
            "-m",
            WEIGHTS,
            "--slide",
            str(tmp_path / "slides.csv"),
            "--patches",
            str(tmp_path / "patches.parquet"),
            "--top",
            "3",
            COLUMN,
            "--n-workers",
            "1",
            *shap,
            "-o",
            str(out),
        ]
    )
    assert rc == 2
    summary = pd.read_csv(out / "summary.csv", dtype={"ID": str}).set_index("ID")
    assert summary.loc["broken", "status"] == "failed"
    assert "broken.svs" in summary.loc["broken", "error"]
    assert "\n" not in summary.loc["broken", "error"]
    ranked = patches.sort_values(COLUMN, ascending=False, kind="stable")
    assert summary.loc[summary["status"] == "done", "patches"].sum() == 2
    assert (out / "workers.log").exists() and (out / "cohort.png").exists()
    top = pd.read_csv(out / "cohort_top.csv", dtype={"ID": str})
    assert len(top) == 2 and top[COLUMN].iloc[0] == pytest.approx(ranked[COLUMN].iloc[0])
    # The best slide's maps: those of the single-slide command given the same rows and seed.
    name = top["ID"].iloc[0]
    mine = top[top["ID"] == name]
    own = pd.read_parquet(_prediction_table(cohort, name)).reset_index(drop=True)
    ids = [
        str(own.index[(own["x"] == x) & (own["y"] == y)][0])
        for x, y in zip(mine["x"], mine["y"], strict=True)
    ]
    maps, keys = _maps(summary.loc[name, "store"])
    single_maps, single_keys = _maps(
        _single(cohort, name, "shapley-plot", ["--ids", *ids], tmp_path / "one.png", *shap)
    )
    pd.testing.assert_frame_equal(keys, single_keys)
    np.testing.assert_allclose(maps, single_maps, rtol=1e-5, atol=1e-7)
    assert os.path.getsize(out / f"{slide_key(cohort['slides'][name])}.png") > 5000


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        ([], "a cohort needs --top N COL"),
        (["--top", "2", "prob_tumour"], "--top: no column 'prob_tumour' in"),
        (["--top", "2", COLUMN, "--ids", "1"], "--ids: not for a cohort"),
    ],
)
def test_bad_cohort_options_are_one_line_before_any_work(
    cohort, tmp_path, capsys, selection, expected
):
    out = tmp_path / "never"
    argv = ["gradcam", "-m", WEIGHTS, "--slide", str(cohort["slides_dir"]), "--patches",
            str(cohort["predictions"]), *selection, "-o", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and expected in err[0], err
    assert not (out / "summary.csv").exists()
