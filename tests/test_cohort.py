"""A cohort on dask.distributed (local clusters of worker processes, CPU): every slide format
mixed, the single-slide options reaching every slide, unique work names, failures that stay one
slide's, and a quiet terminal."""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from conftest import run_cli, write_ome_tiff, write_pyramidal_tiff, write_svs
from napari_pathviz._demo_model import MEAN, STD
from napari_pathviz.cohort import ModelRecipe, find_cohort_slides, run_cohort, slide_key
from napari_pathviz.errors import PathvizError

SIZE = 64
# Larger than 512 px: a single-level slide also gets a lazily built level 1 (a dask graph over
# the file, which is what a worker must compute itself).
HEIGHT, WIDTH = 576, 640
WEIGHTS = str(resources.files("napari_pathviz") / "data" / "demo_model.pt")
FACTORY = "napari_pathviz._demo_model:build_demo_model"
MODEL_ARGS = ["-m", WEIGHTS, "--factory", FACTORY, "--mean", *MEAN, "--std", *STD]


@pytest.fixture(scope="module")
def recipe() -> ModelRecipe:
    return ModelRecipe(path=WEIGHTS, factory=FACTORY, mean=MEAN, std=STD)


@pytest.fixture(scope="module")
def cluster():
    """One running cluster of two worker processes for most runs (as --scheduler ADDRESS)."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # 8787 may be taken
        silence_logs=logging.CRITICAL,
    ) as cluster:
        yield cluster.scheduler_address


def _crop(image: np.ndarray, k: int) -> np.ndarray:
    """A different HEIGHT x WIDTH piece of the tissue image per slide."""
    y, x = (37 * k) % (image.shape[0] - HEIGHT), (53 * k) % (image.shape[1] - WIDTH)
    return np.ascontiguousarray(image[y : y + HEIGHT, x : x + WIDTH])


def _write_ome_zarr(path: Path, image: np.ndarray) -> Path:
    import dask.array as da

    from napari_pathviz.io.pyramid import lazy_levels
    from napari_pathviz.io.zarr_io import write_ome_zarr

    levels = lazy_levels(da.from_array(image, chunks=(128, 128, 3)), min_size=200)
    return write_ome_zarr(levels, path, n_native=len(levels), mpp=0.5, chunk=128)


def _write_pathflowai_zarr(path: Path, image: np.ndarray) -> Path:
    """PathFlowAI's slide: one (x, y, C) array (told apart by the patch database beside it)."""
    import zarr

    transposed = np.ascontiguousarray(image.transpose(1, 0, 2))
    arr = zarr.create_array(
        str(path), shape=transposed.shape, chunks=(128, 128, 3), dtype="uint8", zarr_format=2
    )
    arr[:] = transposed
    return path


def _write_flat_tiff(path: Path, image: np.ndarray) -> Path:
    """A single-level tiled TIFF: every coarser level is built lazily."""
    tifffile.imwrite(path, image, tile=(128, 128), photometric="rgb", compression="zlib")
    return path


def _grid_rows(slide_id: str, size: int, step: int) -> pd.DataFrame:
    ys, xs = np.meshgrid(
        np.arange(0, HEIGHT - size + 1, step), np.arange(0, WIDTH - size + 1, step)
    )
    return pd.DataFrame({"ID": slide_id, "x": xs.ravel(), "y": ys.ravel(), "patch_size": size})


def _write_db(path: Path, rows: pd.DataFrame) -> Path:
    """A PathFlowAI patch database: one table per patch size, named by the size."""
    with sqlite3.connect(path) as con:
        for size, part in rows.groupby("patch_size"):
            part.reset_index(drop=True).to_sql(str(size), con, index=True)
    return path


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, tissue_rgb) -> dict:
    """SVS, pyramidal TIFF, OME-TIFF, single-level TIFF, OME-Zarr and PathFlowAI zarr slides in
    one folder, with a PathFlowAI patch database (128 px patches) naming all of them."""
    folder = tmp_path_factory.mktemp("mixed")
    slides = {
        "scan": write_svs(folder / "scan.svs", _crop(tissue_rgb, 1)),
        "tiled": write_pyramidal_tiff(folder / "tiled.tif", _crop(tissue_rgb, 2)),
        "ome": write_ome_tiff(folder / "ome.ome.tif", _crop(tissue_rgb, 3)),
        "flat": _write_flat_tiff(folder / "flat.tif", _crop(tissue_rgb, 4)),
        "case": _write_ome_zarr(folder / "case.ome.zarr", _crop(tissue_rgb, 5)),
        "pfa": _write_pathflowai_zarr(folder / "pfa.zarr", _crop(tissue_rgb, 6)),
    }
    rows = pd.concat([_grid_rows(i, 128, 160) for i in slides], ignore_index=True)
    db = _write_db(folder / "patch_info.db", rows)
    return {"dir": folder, "slides": slides, "db": db}


def _direct(path: Path, *, patches=None, patch_size=None, level=0, **extract_options):
    """What the single-slide command computes for one slide, in this process."""
    from napari_pathviz.inference import extract
    from napari_pathviz.io.tables import read_table
    from napari_pathviz.patches import patches_for_slide
    from napari_pathviz.slide import open_slide
    from napari_pathviz.tissue import tissue_grid

    slide = open_slide(path)
    if patches is None:
        table = tissue_grid(slide, patch_size or 224, None, 0.5)
    else:
        table = patches_for_slide(
            read_table(patches, patch_size), str(patches), slide, patch_size=patch_size
        )
    spec = ModelRecipe(path=WEIGHTS, factory=FACTORY, mean=MEAN, std=STD).load()
    return extract(slide, table, spec, device="cpu", level=level, **extract_options)


def _assert_same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    keys = ["ID", "x", "y", "patch_size", "y_pred"]
    pd.testing.assert_frame_equal(got[keys], want[keys], check_dtype=False)
    numbers = [c for c in want.columns if c.startswith(("prob_", "feat_"))]
    np.testing.assert_allclose(got[numbers].to_numpy(), want[numbers].to_numpy(), atol=1e-5)


def _table(out: Path, summary: pd.DataFrame, slide_id: str) -> pd.DataFrame:
    row = summary.set_index("ID").loc[slide_id]
    return pd.read_parquet(out / row["output"])


# --------------------------------------------------------------------------- 12: every format


@pytest.mark.parametrize(
    ("patches", "level"), [(None, 0), ("db", 1)], ids=["grid-level0", "db-level1"]
)
def test_mixed_formats_run_on_worker_processes(mixed, recipe, cluster, tmp_path, patches, level):
    """Each worker opens its slide from the path: tifffile handles and the dask graphs of
    lazily built levels never travel (they cannot be pickled)."""
    table = mixed["db"] if patches else None
    summary = run_cohort(
        find_cohort_slides([mixed["dir"]]),
        recipe,
        tmp_path,
        patches=table,
        patch_size=128,
        level=level,
        batch_size=8,
        device="cpu",
        scheduler=cluster,
    )
    assert summary.set_index("ID")["error"].to_dict() == dict.fromkeys(sorted(mixed["slides"]), "")
    assert (summary["status"] == "done").all()
    assert (summary["level"] == level).all()
    for slide_id, path in mixed["slides"].items():
        want = _direct(path, patches=table, patch_size=128, level=level)
        assert len(want) >= 4
        _assert_same(_table(tmp_path, summary, slide_id), want)
    assert not (tmp_path / "workers.log").exists()  # another's cluster: its logs are its own


# --------------------------------------------------------------------------- 13: every option


def _cli(*args) -> int:
    """``pathviz`` in this process (the command's own code path, minus process start-up)."""
    from napari_pathviz.cli import main

    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def pfa_pair(tmp_path_factory, tissue_rgb) -> dict:
    """Two PathFlowAI (x, y, C) zarrs with no database beside them: only --layout xyc reads
    them the right way round."""
    folder = tmp_path_factory.mktemp("pfa")
    return {
        "p1": _write_pathflowai_zarr(folder / "p1.zarr", _crop(tissue_rgb, 7)),
        "p2": _write_pathflowai_zarr(folder / "p2.zarr", _crop(tissue_rgb, 8)),
    }


OPTION_CASES = {
    # name: (options, what shows the option took effect)
    "defaults": ([], None),
    "patch-size": (["--patch-size", 96], "rows"),
    "min-tissue": (["--min-tissue", 0.8], "rows"),
    "level": (["--level", 1], "numbers"),
    "target-mpp": (["--target-mpp", 2.0], "numbers"),
    "patches": (["--patches", "DB"], "rows"),
    "no-embeddings": (["--no-embeddings"], "columns"),
    "batch-size": (["--batch-size", 3], "store"),
    "layout": (["--layout", "xyc"], "rows"),
}


@pytest.fixture(scope="module")
def baseline(mixed, pfa_pair, tmp_path_factory) -> dict:
    """The single-slide command's tables with the default options (patch size 128)."""
    out = tmp_path_factory.mktemp("baseline")
    tables = {}
    for name, path in {
        "scan": mixed["slides"]["scan"],
        "ome": mixed["slides"]["ome"],
        **pfa_pair,
    }.items():
        assert (
            _cli(
                "extract",
                *MODEL_ARGS,
                "--device",
                "cpu",
                "--slide",
                path,
                "--patch-size",
                128,
                "-o",
                out / f"{name}.parquet",
            )
            == 0
        )
        tables[name] = pd.read_parquet(out / f"{name}.parquet")
    return tables


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_every_single_slide_option_reaches_each_slide(
    case, mixed, pfa_pair, baseline, cluster, tmp_path
):
    """The cohort's table of each slide is the single command's, option by option; and each
    option changes the result (else the comparison could not fail)."""
    options, effect = OPTION_CASES[case]
    options = [mixed["db"] if o == "DB" else o for o in options]
    if "--patch-size" not in options:
        options = [*options, "--patch-size", 128]
    slides = (
        pfa_pair
        if case == "layout"
        else {"scan": mixed["slides"]["scan"], "ome": mixed["slides"]["ome"]}
    )
    common = ["extract", *MODEL_ARGS, "--device", "cpu", *options]
    cohort_args = [
        *common,
        "--scheduler",
        cluster,
        "--keep-stores",
        "-o",
        tmp_path / "cohort",
        "--slide",
        *slides.values(),
    ]
    assert _cli(*cohort_args) == 0
    summary = pd.read_csv(tmp_path / "cohort" / "summary.csv", keep_default_na=False)
    assert summary["status"].tolist() == ["done"] * len(slides)
    for name, path in slides.items():
        single = tmp_path / f"{name}.parquet"
        assert _cli(*common, "--slide", path, "-o", single) == 0
        want = pd.read_parquet(single)
        got = _table(tmp_path / "cohort", summary, name)
        _assert_same(got, want)
        before = baseline[name]
        if effect == "rows":
            assert len(want) != len(before) or not want[["x", "y"]].equals(before[["x", "y"]])
        elif effect == "numbers":
            assert want[["x", "y"]].equals(before[["x", "y"]])
            feats = [c for c in before.columns if c.startswith("feat_")]
            assert not np.allclose(want[feats], before[feats], atol=1e-3)
        elif effect == "columns":
            assert not any(c.startswith("feat_") for c in want.columns)
            assert any(c.startswith("feat_") for c in before.columns)
        elif effect == "store":  # the batch size is the store's layout: one done flag a batch
            import zarr

            key = summary.set_index("ID").loc[name, "output"].removesuffix(".parquet")
            done = zarr.open_group(
                str(tmp_path / "cohort" / "stores" / key / "part0.zarr"), mode="r"
            )["done"]
            assert done.shape == (-(-len(want) // 3),)
    if case == "target-mpp":  # chosen per slide: SVS 0.499 µm/px -> level 2, OME-TIFF 0.5 -> 1
        assert summary.set_index("ID")["level"].to_dict() == {"scan": 2, "ome": 1}


# --------------------------------------------------------------------------- 14: unique names


def test_slides_sharing_a_stem_never_share_work(recipe, cluster, tmp_path, tissue_rgb):
    """``a/s.svs``, ``b/s.svs`` and ``a/s.part1.svs`` (once a chunk's name): three tables, each
    exactly its own slide's, under names that summary.csv gives."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    paths = [
        write_svs(tmp_path / "a" / "s.svs", _crop(tissue_rgb, 1)),
        write_svs(tmp_path / "b" / "s.svs", _crop(tissue_rgb, 9)),
        write_svs(tmp_path / "a" / "s.part1.svs", _crop(tissue_rgb, 4)),
    ]
    out = tmp_path / "out"
    seen = []
    summary = run_cohort(
        paths,
        recipe,
        out,
        patch_size=128,
        chunk_size=4,
        device="cpu",
        scheduler=cluster,
        progress=lambda done, total, message: seen.append((done, total)),
    )
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert summary["ID"].tolist() == ["s", "s", "s.part1"]
    assert summary["status"].tolist() == ["done"] * 3
    names = summary["output"].tolist()
    assert names == [f"{slide_key(p)}.parquet" for p in paths] and len(set(names)) == 3
    assert all(re.fullmatch(r"s(\.part1)?-[0-9a-f]{8}\.parquet", n) for n in names)
    tables = [pd.read_parquet(out / n) for n in names]
    for path, got in zip(paths, tables, strict=True):
        _assert_same(got, _direct(path, patch_size=128))
    assert not tables[0]["feat_0"].equals(tables[1]["feat_0"])  # two slides, two results

    # A patch table keyed by ID alone cannot say which "s" a row is for: those two fail, named.
    rows = pd.concat([_grid_rows("s", 128, 160), _grid_rows("s.part1", 128, 160)])
    rows.to_csv(tmp_path / "rows.csv", index=False)
    again = run_cohort(
        paths,
        recipe,
        tmp_path / "out2",
        patches=tmp_path / "rows.csv",
        device="cpu",
        scheduler=cluster,
    )
    assert again["status"].tolist() == ["failed", "failed", "done"]
    assert f"also names {paths[1]}" in again.loc[0, "error"]
    assert f"also names {paths[0]}" in again.loc[1, "error"]


# --------------------------------------------------------------------------- 15: failures stay one slide's


def test_a_bad_row_and_a_missing_slide_fail_alone(mixed, recipe, cluster, tmp_path):
    good, bad_rows = mixed["slides"]["ome"], mixed["slides"]["tiled"]
    rows = pd.concat(
        [_grid_rows("ome", 128, 160), _grid_rows("tiled", 128, 160)], ignore_index=True
    )
    bad_row = int(np.flatnonzero(rows["ID"] == "tiled")[2])
    rows.loc[bad_row, "x"] = -5
    rows.to_csv(tmp_path / "rows.csv", index=False)
    listing = tmp_path / "cohort.txt"
    listing.write_text(f"{good}\n{bad_rows}\nnowhere/gone.svs\n")
    slides = find_cohort_slides([listing])
    gone = tmp_path / "nowhere" / "gone.svs"
    assert slides == sorted([good, bad_rows, gone], key=str)  # the missing one is kept
    summary = run_cohort(
        slides,
        recipe,
        tmp_path / "out",
        patches=tmp_path / "rows.csv",
        device="cpu",
        scheduler=cluster,
    )
    rows_of = summary.set_index("ID")
    assert rows_of["status"].to_dict() == {"gone": "failed", "ome": "done", "tiled": "failed"}
    assert rows_of.loc["gone", "error"] == f"{gone}: no such file or directory"
    assert rows_of.loc["tiled", "error"] == (
        f"{bad_rows}: {tmp_path / 'rows.csv'}: row {bad_row}: x must be a non-negative pixel "
        "coordinate, found -5"
    )
    rows[rows["ID"] == "ome"].to_csv(tmp_path / "ome_rows.csv", index=False)
    want = _direct(good, patches=tmp_path / "ome_rows.csv")
    _assert_same(_table(tmp_path / "out", summary, "ome"), want)


# --------------------------------------------------------------------------- 16: a quiet terminal


def test_cli_cohort_prints_one_line_per_failed_slide(mixed, tmp_path, tissue_rgb):
    """The real command on its own local cluster of two workers: a slide that is no TIFF, one
    whose zarr chunk is torn (fails inside a worker, in a chunk), one missing; the terminal gets
    a line for each and one last line, no traceback and no distributed log line; exit 2."""
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"this is not a TIFF file at all\n" * 10)
    torn = _write_ome_zarr(tmp_path / "torn.ome.zarr", _crop(tissue_rgb, 2))
    chunk = torn / "0" / "0" / "1" / "1"
    assert chunk.exists()
    chunk.write_bytes(b"garbage, not a blosc frame")
    missing = tmp_path / "missing.tif"
    out = tmp_path / "out"
    done = run_cli(
        "extract",
        *MODEL_ARGS,
        "--device",
        "cpu",
        "--patch-size",
        128,
        "--n-workers",
        2,
        "--slide",
        mixed["slides"]["scan"],
        broken,
        torn,
        missing,
        "-o",
        out,
        env={"TQDM_DISABLE": "1"},  # the progress bar: a terminal's, not a message
    )
    summary = pd.read_csv(out / "summary.csv", keep_default_na=False).set_index("ID")
    assert summary["status"].to_dict() == {
        "broken": "failed",
        "missing": "failed",
        "scan": "done",
        "torn": "failed",
    }
    expected = [
        f"pathviz extract: failed: {summary.loc[i, 'error']}" for i in ("broken", "missing", "torn")
    ]
    expected.append(
        f"pathviz extract: error: 3 of 4 slides failed (the others are done; see {out / 'summary.csv'})"
    )
    assert done.stderr.splitlines() == expected, done.stderr
    assert done.returncode == 2
    assert str(torn) in summary.loc["torn", "error"]
    assert "Traceback" not in done.stderr and "distributed" not in done.stderr
    assert summary.loc["broken", "output"] == "" and (out / "workers.log").exists()
    _assert_same(
        pd.read_parquet(out / summary.loc["scan", "output"]),
        _direct(mixed["slides"]["scan"], patch_size=128),
    )
    # The done slide leaves no journal; the torn one keeps what it finished, for a rerun.
    assert [p.name for p in (out / "stores").iterdir()] == [slide_key(torn)]


def _shout(text: str) -> None:
    """In a worker: what a library might print, in each way it might."""
    import logging
    import os
    import sys
    import warnings

    print(f"{text} print", file=sys.stderr, flush=True)
    os.write(2, f"{text} fd\n".encode())
    warnings.warn(f"{text} warning", UserWarning, stacklevel=1)
    logging.getLogger("distributed.worker").critical(f"{text} log")


def test_worker_stderr_goes_to_the_log(cluster, tmp_path):
    """Everything a worker writes to stderr lands in the log file: Python's stream, the file
    descriptor itself (C libraries), warnings and log lines."""
    from distributed import Client

    from napari_pathviz.cohort_tasks import WorkerLog

    log = tmp_path / "workers.log"
    with Client(cluster) as client:
        client.register_plugin(WorkerLog(str(log)))
        client.run(_shout, "hello")
    text = log.read_text()
    for what in ("print", "fd", "warning", "log"):
        assert text.count(f"hello {what}") == 2, text  # from each of the two workers


# --------------------------------------------------------------------------- reruns and chunks


def test_rerun_skips_the_same_job_and_redoes_a_changed_one(mixed, recipe, cluster, tmp_path):
    slides = [mixed["slides"]["case"], mixed["slides"]["ome"]]
    kwargs = {"patch_size": 128, "device": "cpu", "scheduler": cluster}
    first = run_cohort(slides, recipe, tmp_path, **kwargs)
    assert first["status"].tolist() == ["done", "done"]
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.parquet")}
    assert len(stamps) == 2
    again = run_cohort(slides, recipe, tmp_path, **kwargs)
    assert again["status"].tolist() == ["skipped", "skipped"]
    assert again["patches"].tolist() == first["patches"].tolist()
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.parquet")} == stamps
    # Another option is another job: its tables are computed, never the previous ones served.
    other = run_cohort(slides, recipe, tmp_path, level=1, **kwargs)
    assert other["status"].tolist() == ["done", "done"]
    for slide in slides:
        got = pd.read_parquet(tmp_path / f"{slide_key(slide)}.parquet")
        _assert_same(got, _direct(slide, patch_size=128, level=1))


def test_chunks_match_one_task_and_an_interrupted_slide_resumes(mixed, recipe, cluster, tmp_path):
    slide = mixed["slides"]["case"]
    kwargs = {"patch_size": 128, "batch_size": 4, "device": "cpu", "scheduler": cluster}
    run_cohort([slide], recipe, tmp_path / "whole", **kwargs)
    name = f"{slide_key(slide)}.parquet"
    whole = pd.read_parquet(tmp_path / "whole" / name)
    out = tmp_path / "chunked"
    summary = run_cohort([slide], recipe, out, chunk_size=5, keep_stores=True, **kwargs)
    assert summary["status"].tolist() == ["done"] and len(whole) > 10
    _assert_same(pd.read_parquet(out / name), whole)
    work = out / "stores" / slide_key(slide)
    n_chunks = -(-len(whole) // 5)
    assert sorted(p.name for p in work.iterdir()) == sorted(
        f"part{k}.zarr" for k in range(n_chunks)
    )
    # Stopped between the stores and the table: the table is written from the stores, as they are.
    stamps = {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()}
    (out / name).unlink()
    summary = run_cohort([slide], recipe, out, chunk_size=5, keep_stores=True, **kwargs)
    assert summary["status"].tolist() == ["done"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # read, never rewritten
    _assert_same(pd.read_parquet(out / name), whole)


def test_a_damaged_chunk_store_is_rebuilt(mixed, recipe, cluster, tmp_path):
    """A chunk store whose metadata a crash cut short is the cohort's own journal: the rerun
    recomputes that chunk (not a refusal, not a traceback) and gives the same table."""
    slide = mixed["slides"]["case"]
    kwargs = {"patch_size": 128, "batch_size": 4, "device": "cpu", "scheduler": cluster}
    out, name = tmp_path / "cohort", f"{slide_key(slide)}.parquet"
    run_cohort([slide], recipe, out, chunk_size=5, keep_stores=True, **kwargs)
    whole = pd.read_parquet(out / name)
    done = out / "stores" / slide_key(slide) / "part0.zarr" / "done" / "zarr.json"
    done.write_text(done.read_text()[:30])
    (out / name).unlink()
    summary = run_cohort([slide], recipe, out, chunk_size=5, keep_stores=True, **kwargs)
    assert summary["status"].tolist() == ["done"], summary
    _assert_same(pd.read_parquet(out / name), whole)
    json.loads(done.read_text())  # rewritten whole


# --------------------------------------------------------------------------- up-front errors


def test_bad_model_fails_up_front(mixed, cluster, tmp_path):
    recipe = ModelRecipe(path=WEIGHTS, factory="napari_pathviz._demo_model:nope")
    with pytest.raises(PathvizError, match="nope"):
        run_cohort([mixed["slides"]["case"]], recipe, tmp_path, scheduler=cluster)


def test_run_cohort_rejects_bad_options(mixed, recipe, tmp_path):
    slides = [mixed["slides"]["case"], mixed["slides"]["ome"]]
    no_ids = tmp_path / "no_ids.csv"
    pd.DataFrame({"x": [0], "y": [0], "patch_size": [SIZE]}).to_csv(no_ids, index=False)
    with pytest.raises(PathvizError, match="no ID column"):
        run_cohort(slides, recipe, tmp_path / "out", patches=no_ids)
    for options, message in [
        ({"chunk_size": 0}, "--chunk-size must be positive"),
        ({"batch_size": 0}, "--batch-size must be positive"),
        ({"target_mpp": -1.0}, "--target-mpp must be positive"),
        ({"min_tissue": 2.0}, "--min-tissue must be between 0 and 1"),
        ({"layout": "zyx"}, "--layout must be one of"),
        ({"level": -1}, "--level must be 0 or more"),
    ]:
        with pytest.raises(PathvizError, match=message):
            run_cohort(slides, recipe, tmp_path / "out", **options)
    assert not os.path.exists(tmp_path / "out" / "summary.csv")


def test_find_cohort_slides(mixed, tmp_path):
    folder = mixed["dir"]
    from_dir = find_cohort_slides([folder])
    names = ["case.ome.zarr", "flat.tif", "ome.ome.tif", "pfa.zarr", "scan.svs", "tiled.tif"]
    assert [p.name for p in from_dir] == names  # not the patch database
    assert all(p.is_absolute() for p in from_dir)
    listing = tmp_path / "cohort.txt"
    listing.write_text(f"# my cohort\n{folder / 'scan.svs'}\n\n{folder}  # a folder\n")
    assert find_cohort_slides([listing, folder / "flat.tif"]) == from_dir  # each slide once
    # A missing slide stays (its job reports it); a missing folder or list is an error.
    assert find_cohort_slides([tmp_path / "gone.svs"]) == [tmp_path / "gone.svs"]
    with pytest.raises(PathvizError, match="no such file"):
        find_cohort_slides([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(PathvizError, match="no slides found"):
        find_cohort_slides([tmp_path / "empty"])
    with pytest.raises(PathvizError, match="not a slide"):
        find_cohort_slides([mixed["db"]])
    bad_list = tmp_path / "list.txt"
    bad_list.write_text("nowhere\n")
    with pytest.raises(PathvizError, match=r"nowhere.*listed in"):
        find_cohort_slides([bad_list])


def test_worker_device_spreads_gpus_on_a_local_cluster(monkeypatch):
    import distributed
    import torch

    from napari_pathviz.cohort_tasks import worker_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(distributed, "get_worker", lambda: type("W", (), {"name": 3})())
    assert worker_device("auto", True) == "cuda:1"
    assert worker_device("cuda", True) == "cuda:1"
    assert worker_device("cuda:0", True) == "cuda:0"
    assert worker_device("cpu", True) == "cpu"
    assert worker_device("auto", False) == "auto"  # another's cluster: its own GPU placement


def test_recipe_key_follows_the_model_card(tmp_path):
    """Editing the card beside unchanged weights changes what a worker computes, so it must
    change the key that decides whether a worker's loaded model can be reused."""
    import json
    import shutil
    from importlib import resources

    from napari_pathviz.cohort import ModelRecipe

    data = resources.files("napari_pathviz") / "data"
    weights = shutil.copyfile(data / "demo_model.pt", tmp_path / "m.pt")
    card = json.loads((data / "demo_model.json").read_text())
    (tmp_path / "m.json").write_text(json.dumps(card))
    before = ModelRecipe(path=str(weights)).cache_key()
    assert ModelRecipe(path=str(weights)).cache_key() == before
    card["std"] = [0.2, 0.2, 0.2]
    (tmp_path / "m.json").write_text(json.dumps(card))
    assert ModelRecipe(path=str(weights)).cache_key() != before
