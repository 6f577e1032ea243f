"""A cohort on dask.distributed (local clusters, CPU): per-slide results, failures, resume."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_pathviz.cohort import ModelRecipe, find_cohort_slides, run_cohort
from napari_pathviz.errors import PathvizError

SIZE = 64


def _write_zarr_slide(path: Path, image: np.ndarray) -> Path:
    import dask.array as da

    from napari_pathviz.io.pyramid import lazy_levels
    from napari_pathviz.io.zarr_io import write_ome_zarr

    levels = lazy_levels(da.from_array(image, chunks=(128, 128, 3)), min_size=100)
    return write_ome_zarr(levels, path, n_native=1, mpp=0.5, chunk=128)


def _grid(slide_id: str, height: int, width: int) -> pd.DataFrame:
    ys, xs = np.meshgrid(
        np.arange(0, height - SIZE + 1, SIZE), np.arange(0, width - SIZE + 1, SIZE)
    )
    return pd.DataFrame(
        {"ID": slide_id, "x": xs.ravel(), "y": ys.ravel(), "patch_size": SIZE, "extra": 1}
    )


@pytest.fixture(scope="module")
def recipe() -> ModelRecipe:
    from importlib import resources

    from napari_pathviz._demo_model import MEAN, STD

    weights = resources.files("napari_pathviz") / "data" / "demo_model.pt"
    return ModelRecipe(
        path=str(weights),
        factory="napari_pathviz._demo_model:build_demo_model",
        mean=MEAN,
        std=STD,
    )


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, tissue_rgb) -> dict:
    """Two good OME-Zarr slides, one .svs that is no TIFF, and a patch table for all three."""
    root = tmp_path_factory.mktemp("cohort")
    slides = root / "slides"
    slides.mkdir()
    a = _write_zarr_slide(slides / "case_a.ome.zarr", tissue_rgb[:256, :384])
    b = _write_zarr_slide(slides / "case_b.ome.zarr", tissue_rgb[300:556, 500:756])
    broken = slides / "broken.svs"
    broken.write_bytes(b"this is not a TIFF file at all\n" * 10)
    (slides / "notes.csv").write_text("not a slide\n")
    table = pd.concat(
        [_grid("case_a", 256, 384), _grid("case_b", 256, 256), _grid("broken", 128, 128)],
        ignore_index=True,
    )
    csv = root / "patches.csv"
    table.to_csv(csv, index=False)
    return {"root": root, "dir": slides, "a": a, "b": b, "broken": broken, "csv": csv}


@pytest.fixture(scope="module")
def cluster():
    """One running cluster for most runs (as with --scheduler ADDRESS): starts once."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def first_run(cohort, recipe):
    """The whole cohort on the default local cluster (started and closed by run_cohort)."""
    out = cohort["root"] / "out"
    seen = []
    slides = find_cohort_slides([cohort["dir"]])
    summary = run_cohort(
        slides,
        recipe,
        out,
        patches=str(cohort["csv"]),
        batch_size=16,
        device="cpu",
        n_workers=2,
        progress=lambda done, total, msg: seen.append((done, total, msg)),
    )
    return {"out": out, "summary": summary, "progress": seen}


def _direct(slide_path: Path, csv: Path, recipe: ModelRecipe) -> pd.DataFrame:
    from napari_pathviz.inference import extract
    from napari_pathviz.io.tables import read_table
    from napari_pathviz.patches import patches_for_slide
    from napari_pathviz.slide import open_slide

    slide = open_slide(slide_path)
    table = patches_for_slide(read_table(csv), str(csv), slide)
    return extract(slide, table, recipe.load(), batch_size=16, device="cpu")


def _assert_same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    keys = ["ID", "x", "y", "patch_size", "y_pred"]
    pd.testing.assert_frame_equal(got[keys], want[keys], check_dtype=False)
    numbers = [c for c in want.columns if c.startswith(("prob_", "feat_"))]
    np.testing.assert_allclose(got[numbers].to_numpy(), want[numbers].to_numpy(), atol=1e-5)


def test_cohort_reports_failed_slide_and_finishes_the_others(first_run, cohort, recipe):
    summary = first_run["summary"]
    assert list(summary.columns) == ["slide", "ID", "status", "patches", "seconds", "error"]
    status = dict(zip(summary["ID"], summary["status"], strict=True))
    assert status == {"broken": "failed", "case_a": "done", "case_b": "done"}
    failed = summary.set_index("ID").loc["broken"]
    assert "broken.svs" in failed["error"] and "\n" not in failed["error"]
    done = summary.set_index("ID").loc[["case_a", "case_b"]]
    assert done["patches"].tolist() == [24, 16]
    assert (done["error"] == "").all() and (done["seconds"] > 0).all()
    on_disk = pd.read_csv(first_run["out"] / "summary.csv")
    assert on_disk["status"].tolist() == summary["status"].tolist()
    assert [p[:2] for p in first_run["progress"]] == [(1, 3), (2, 3), (3, 3)]
    # Per-slide parquets hold exactly what extract gives on that slide.
    for key in ("a", "b"):
        slide = cohort[key]
        got = pd.read_parquet(first_run["out"] / f"case_{key}.parquet")
        _assert_same(got, _direct(slide, cohort["csv"], recipe))
    assert not (first_run["out"] / "broken.parquet").exists()
    # Finished slides leave no journal behind.
    assert not list((first_run["out"] / "stores").glob("case_*"))


def test_rerun_skips_finished_slides(first_run, cohort, recipe, cluster):
    out = first_run["out"]
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    assert set(stamps) == {"case_a.parquet", "case_b.parquet"}
    summary = run_cohort(
        find_cohort_slides([cohort["dir"]]),
        recipe,
        out,
        patches=cohort["csv"],
        device="cpu",
        scheduler=cluster,
    )
    status = dict(zip(summary["ID"], summary["status"], strict=True))
    assert status == {"broken": "failed", "case_a": "skipped", "case_b": "skipped"}
    assert summary.set_index("ID").loc["case_a", "patches"] == 24
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")} == stamps


def test_chunked_run_matches_unchunked(first_run, cohort, recipe, cluster, tmp_path):
    import zarr

    out = tmp_path / "chunked"
    # Left by a run with other patches or model: replaced, not an error. And one left by a run
    # with another chunk size: removed once the slide is done.
    stale = zarr.open_group(str(out / "stores" / "case_a.part1.zarr"), mode="w")
    stale.attrs["job"] = "another job"
    zarr.open_group(str(out / "stores" / "case_a.part9.zarr"), mode="w")
    summary = run_cohort(
        [cohort["a"], cohort["b"]],
        recipe,
        out,
        patches=cohort["csv"],
        batch_size=4,
        device="cpu",
        chunk_size=7,  # 24 patches -> 4 chunks, the last short; batches cross no chunk
        scheduler=cluster,
    )
    assert summary["status"].tolist() == ["done", "done"]
    assert summary["patches"].tolist() == [24, 16]
    for name in ("case_a.parquet", "case_b.parquet"):
        _assert_same(pd.read_parquet(out / name), pd.read_parquet(first_run["out"] / name))
    assert not list((out / "stores").iterdir())


def test_an_interrupted_slide_resumes_from_its_store(first_run, cohort, recipe, cluster, tmp_path):
    """A slide whose results are all in its store but whose parquet is missing (as when a run
    stops between the two) is written from the store, which is reused as it is."""
    kwargs = {"patches": cohort["csv"], "batch_size": 8, "device": "cpu", "scheduler": cluster}
    run_cohort([cohort["b"]], recipe, tmp_path, keep_stores=True, **kwargs)
    store = tmp_path / "stores" / "case_b.zarr"
    stamps = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}
    assert stamps
    (tmp_path / "case_b.parquet").unlink()
    summary = run_cohort([cohort["b"]], recipe, tmp_path, keep_stores=True, **kwargs)
    assert summary["status"].tolist() == ["done"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # read, never rewritten
    _assert_same(
        pd.read_parquet(tmp_path / "case_b.parquet"),
        pd.read_parquet(first_run["out"] / "case_b.parquet"),
    )


def test_a_failing_chunk_fails_its_slide_only(cohort, recipe, cluster, tmp_path, tissue_rgb):
    """A zarr slide with one corrupt chunk: the slide opens, the chunk reading it raises."""
    bad = _write_zarr_slide(tmp_path / "torn.ome.zarr", tissue_rgb[:256, :256])
    chunk = bad / "0" / "1" / "1" / "0"
    assert chunk.exists()
    chunk.write_bytes(b"garbage, not a blosc frame")
    table = pd.concat([_grid("torn", 256, 256), _grid("case_a", 256, 384)])
    csv = tmp_path / "patches.csv"
    table.to_csv(csv, index=False)
    out = tmp_path / "out"
    summary = run_cohort(
        [bad, cohort["a"]],
        recipe,
        out,
        patches=csv,
        batch_size=4,
        device="cpu",
        chunk_size=8,
        keep_stores=True,
        scheduler=cluster,
    )
    rows = summary.set_index("ID")

    assert rows.loc["case_a", "status"] == "done"
    assert rows.loc["torn", "status"] == "failed"
    assert "torn.ome.zarr" in rows.loc["torn", "error"]
    assert (out / "case_a.parquet").exists() and not (out / "torn.parquet").exists()
    assert (out / "stores" / "case_a.part0.zarr").exists()  # keep_stores


def test_tissue_grid_when_no_table(cohort, recipe, cluster, tmp_path):
    from napari_pathviz.inference import extract
    from napari_pathviz.slide import open_slide
    from napari_pathviz.tissue import tissue_grid

    summary = run_cohort(
        [cohort["b"]],
        recipe,
        tmp_path,
        patch_size=SIZE,
        min_tissue=0.5,
        device="cpu",
        scheduler=cluster,
        embeddings=False,
    )
    assert summary["status"].tolist() == ["done"]
    slide = open_slide(cohort["b"])
    want = extract(
        slide,
        tissue_grid(slide, SIZE, min_tissue=0.5),
        recipe.load(),
        device="cpu",
        embeddings=False,
    )
    assert summary["patches"].tolist() == [len(want)]
    _assert_same(pd.read_parquet(tmp_path / "case_b.parquet"), want)


def test_bad_model_fails_up_front(cohort, cluster, tmp_path):
    recipe = ModelRecipe(path=str(cohort["csv"]), factory="napari_pathviz._demo_model:nope")
    with pytest.raises(PathvizError, match="nope"):
        run_cohort([cohort["a"]], recipe, tmp_path, patches=cohort["csv"], scheduler=cluster)


def test_find_cohort_slides(cohort, tmp_path):
    from_dir = find_cohort_slides([cohort["dir"]])
    assert [p.name for p in from_dir] == ["broken.svs", "case_a.ome.zarr", "case_b.ome.zarr"]
    assert all(p.is_absolute() for p in from_dir)

    listing = cohort["dir"] / "cohort.txt"
    listing.write_text(f"# my cohort\ncase_b.ome.zarr\n\n{cohort['a']}  # absolute\n")
    try:
        from_list = find_cohort_slides([str(listing)])
        assert [p.name for p in from_list] == ["case_a.ome.zarr", "case_b.ome.zarr"]
        # A folder and a list naming the same slides: each slide once.
        assert find_cohort_slides([listing, cohort["dir"], cohort["a"]]) == from_dir
    finally:
        listing.unlink()

    with pytest.raises(PathvizError, match="no such file"):
        find_cohort_slides([tmp_path / "missing"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PathvizError, match="no slides found"):
        find_cohort_slides([empty])
    with pytest.raises(PathvizError, match="not a slide"):
        find_cohort_slides([cohort["csv"]])
    bad_list = tmp_path / "list.txt"
    bad_list.write_text("nowhere.svs\n")
    with pytest.raises(PathvizError, match=r"nowhere\.svs.*listed in"):
        find_cohort_slides([bad_list])


def test_run_cohort_rejects_bad_input(cohort, recipe, tmp_path):
    copy = tmp_path / "case_a.svs"
    shutil.copy(cohort["broken"], copy)
    with pytest.raises(PathvizError, match="slide ID 'case_a'"):
        run_cohort([cohort["a"], copy], recipe, tmp_path / "out")
    no_ids = tmp_path / "no_ids.csv"
    pd.DataFrame({"x": [0], "y": [0], "patch_size": [SIZE]}).to_csv(no_ids, index=False)
    with pytest.raises(PathvizError, match="no ID column"):
        run_cohort([cohort["a"], cohort["b"]], recipe, tmp_path / "out", patches=no_ids)
    with pytest.raises(PathvizError, match="chunk-size"):
        run_cohort([cohort["a"]], recipe, tmp_path / "out", chunk_size=0)
    assert not os.path.exists(tmp_path / "out" / "summary.csv")


def test_worker_device_spreads_gpus_on_a_local_cluster(monkeypatch):
    import distributed
    import torch

    from napari_pathviz.cohort import _worker_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(distributed, "get_worker", lambda: type("W", (), {"name": 3})())
    assert _worker_device("auto", True) == "cuda:1"
    assert _worker_device("cuda", True) == "cuda:1"
    assert _worker_device("cuda:0", True) == "cuda:0"
    assert _worker_device("cpu", True) == "cpu"
    assert _worker_device("auto", False) == "auto"  # another's cluster: its own GPU placement
