"""Outputs never replace inputs, never replace files without --overwrite, and are written
atomically: a failed write keeps the previous file and leaves no temporary file behind.

The guard runs before any computation, so most cases need no model or UMAP: each row gives the
command, asserts exit 2 with one stderr line naming the options and path, and checks that no
input file changed."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import sqlite3
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from napari_pathviz.cli import main
from napari_pathviz.errors import PathvizError
from napari_pathviz.io.atomic import atomic_folder
from napari_pathviz.io.tables import read_table, write_table


def run_main(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def error_lines(stderr: str) -> list[str]:
    """stderr without tqdm's cleared progress bars (carriage-return redraws)."""
    lines = (line.rsplit("\r", 1)[-1] for line in stderr.split("\n"))
    return [line for line in lines if line.strip()]


def digest(path: Path) -> str:
    """A content hash of a file or of every file in a folder."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def project(tmp_path, ome_zarr):
    """A slide, a patch table (CSV and Parquet), embeddings and a 'model' file: inputs only.
    (The guard refuses before any of them is opened, so the model need not be one.)"""
    rows = pd.DataFrame(
        {
            "ID": "slide",
            "x": [0, 128, 256],
            "y": [0, 0, 128],
            "patch_size": 128,
            "p": [0.1, 0.5, 0.9],
        }
    )
    paths = {"slide": ome_zarr, "csv": tmp_path / "T.csv", "parquet": tmp_path / "T.parquet"}
    rows.to_csv(paths["csv"], index=False)
    rows.to_parquet(paths["parquet"], index=False)
    emb = rows[["ID", "x", "y", "patch_size"]].assign(**{f"f{j}": np.arange(3.0) for j in range(4)})
    paths["emb"] = tmp_path / "E.parquet"
    emb.to_parquet(paths["emb"], index=False)
    paths["model"] = tmp_path / "model.pt"
    paths["model"].write_bytes(b"weights")
    paths["png"] = tmp_path / "old.png"
    paths["png"].write_bytes(b"an earlier figure")
    os.link(paths["csv"], tmp_path / "hardlink.csv")
    (tmp_path / "symlink.parquet").symlink_to(paths["parquet"])
    (tmp_path / "a_file").write_text("not a folder")
    return paths


M = ["-m", "{model}"]
# (command line with {placeholders}, words the one error line must hold)
CASES = [
    (["extract", *M, "--slide", "{slide}", "--patches", "{csv}", "-o", "{csv}"],
     ["-o/--out", "--patches", "T.csv", "never replaces an input"]),
    (["extract", *M, "--slide", "{slide}", "-o", "{tmp}/out.parquet", "--store",
      "{tmp}/out.parquet"], ["-o/--out and --store", "same path"]),
    (["extract", *M, "--slide", "{slide}", "-o", "{tmp}/o.parquet", "--store", "{slide}"],
     ["--store", "is the input --slide"]),
    (["extract", *M, "--slide", "{slide}", "-o", "{slide}/0/rows.parquet"],
     ["-o/--out", "is inside the input --slide"]),
    (["extract", *M, "--slide", "{slide}", "-o", "{model}"],
     ["-o/--out", "is the input -m/--model"]),
    (["extract", *M, "--slide", "{slide}", "-o", "{png}"],
     ["-o/--out", "must end in .csv"]),
    (["extract", *M, "--slide", "{slide}", "{tmp}/other.zarr", "--patches", "{tmp}/out/summary.csv",
      "-o", "{tmp}/out"], ["-o/--out", "summary.csv", "is the input --patches"]),
    (["render", "{slide}", "--patches", "{tmp}/hardlink.csv", "-o", "{csv}"],
     ["-o/--out", "is the input --patches", "hardlink.csv"]),
    (["render", "{slide}", "--patches", "{tmp}/symlink.parquet", "-o", "{parquet}"],
     ["-o/--out", "is the input --patches"]),
    (["render", "{slide}", "-o", "{tmp}/table.csv"], ["-o/--out", "table.csv", "must end in .png"]),
    (["render", "{slide}", "-o", "{png}"], ["-o/--out", "old.png already exists", "--overwrite"]),
    (["render", "{slide}", "-o", "{tmp}/a_file/fig.png"], ["cannot write", "is not a folder"]),
    (["render", "{slide}", "-o", "{tmp}"], ["-o/--out", "must end in .png"]),
    (["plot-predictions", "--slide", "{slide}", "-p", "{parquet}", "-o", "{parquet}"],
     ["-o/--out", "is the input -p/--predictions"]),
    (["plot-embeddings", "-i", "{emb}", "--coords-out", "{emb}", "-o", "{tmp}/e.html"],
     ["--coords-out", "is the input -i/--input", "E.parquet"]),
    (["plot-embeddings", "-i", "{emb}", "-o", "{emb}"], ["-o/--output", "is the input -i/--input"]),
    (["plot-embeddings", "-i", "{emb}", "-o", "{tmp}/e.html", "--coords-out", "{tmp}/e.html"],
     ["-o/--output and --coords-out", "same path"]),
    (["plot-embeddings", "-i", "{emb}", "--keys", "{csv}", "-o", "{tmp}/e.html",
      "--coords-out", "{tmp}/hardlink.csv"], ["--coords-out", "is the input --keys"]),
    (["plot-image-umap-embeddings", "-e", "{emb}", "-i", "{slide}", "-o", "{slide}/m.png"],
     ["-o/--output", "is inside the input -i/--input"]),
    (["plot-image-umap-embeddings", "-e", "{emb}", "-i", "{tmp}", "-o", "{slide}/m.png"],
     ["-o/--output", "is inside the input -i/--input", "slide.ome.zarr"]),
    (["convert", "{slide}", "{slide}/copy.zarr"], ["OUT", "is inside the input SLIDE"]),
    (["convert", "{slide}", "{tmp}", "--overwrite"], ["OUT", "would hold the input SLIDE"]),
    (["convert", "{slide}", "{slide}"], ["OUT", "is the input SLIDE"]),
    (["shapley-plot", *M, "--slide", "{slide}", "--patches", "{csv}", "-o", "{tmp}/g.png",
      "--attributions-out", "{tmp}/g.png"], ["-o/--out and --attributions-out", "same path"]),
    (["shapley-plot", *M, "--slide", "{slide}", "--patches", "{csv}", "-o", "{tmp}/g.png",
      "--background", "{tmp}/g.png"], ["-o/--out", "is the input --background"]),
    (["gradcam", *M, "--slide", "{slide}", "--patches", "{csv}", "-o", "{png}"],
     ["old.png already exists"]),
    (["gradcam", *M, "--slide", "{slide}", "--patches", "{csv}", "-o", "{tmp}/g.png",
      "--attributions-out", "{slide}"], ["--attributions-out", "is the input --slide"]),
    (["sanity-check", *M, "--slide", "{slide}", "--patches", "{csv}", "-o", "{tmp}/s.png"],
     ["-o/--out", "must end in .csv"]),
    (["sanity-check", *M, "--slide", "{slide}", "--patches", "{csv}", "-o", "{csv}"],
     ["-o/--out", "is the input --patches"]),
    (["patches", "{slide}", "-o", "{csv}"], ["-o/--out", "T.csv already exists"]),
    (["patches", "{slide}", "-o", "{slide}"], ["-o/--out", "is the input SLIDE"]),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "words"), CASES, ids=lambda v: " ".join(v)[:60])
def test_outputs_never_replace_inputs_or_files(project, tmp_path, argv, words):
    names = {**{k: str(v) for k, v in project.items()}, "tmp": str(tmp_path)}
    before = {name: digest(path) for name, path in project.items()}
    code, _, err = run_main(*[a.format(**names) for a in argv])
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"pathviz {argv[0]}: error: ")
    for word in words:
        assert word in lines[0], lines[0]
    assert {name: digest(path) for name, path in project.items()} == before
    assert not (tmp_path / "out").exists() and not (tmp_path / "g.png").exists()


def test_console_script_prints_one_line(project, tmp_path):
    """As a user runs it: exit 2, one stderr line, no traceback, nothing written."""
    result = run_cli(
        "extract", "-m", project["model"], "--slide", project["slide"],
        "--patches", project["csv"], "-o", project["csv"],
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert error_lines(result.stderr) == [
        f"pathviz extract: error: -o/--out {project['csv']} is the input --patches "
        f"{project['csv']}: an output never replaces an input; choose another output path"
    ]
    assert not list(tmp_path.glob("T.csv.store.zarr"))


def test_overwrite_replaces_a_figure_atomically(project, tmp_path):
    old = project["png"].read_bytes()
    code, out, err = run_main("render", project["slide"], "-o", project["png"], "--overwrite")
    assert code == 0, err
    new = project["png"].read_bytes()
    assert new != old and new[:8] == b"\x89PNG\r\n\x1a\n"
    assert hidden_leftovers(tmp_path) == []


def test_pathflowai_database_tables(pathflowai_project):
    """`patches slide -o patch_info.db` never silently replaces table 224 (here 256): refused
    without --overwrite; a new size is added; --overwrite replaces that table only."""
    db, zarr = pathflowai_project["db"], pathflowai_project["zarr"]

    def tables() -> dict[str, int]:
        with sqlite3.connect(db) as con:
            names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            return {n: con.execute(f'SELECT COUNT(*) FROM "{n}"').fetchone()[0] for n in names}

    before = tables()
    assert before == {"128": 71, "256": 16}
    code, _, err = run_main("patches", zarr, "-o", db, "--patch-size", "256")
    assert code == 2 and "already holds table '256'" in err and "--overwrite" in err
    assert tables() == before
    code, out, err = run_main("patches", zarr, "-o", db, "--patch-size", "64")
    assert code == 0, err
    n64 = int(out.split(": ")[1].split()[0])
    assert tables() == {**before, "64": n64} and n64 > 100
    code, out, err = run_main("patches", zarr, "-o", db, "--patch-size", "256", "--overwrite")
    assert code == 0, err
    n256 = int(out.split(": ")[1].split()[0])
    assert tables() == {"128": 71, "64": n64, "256": n256}
    assert set(read_table(db, 256)["ID"]) == {"case01"}  # the old table's other_slide row: gone


class _FullDisk:
    """A value whose text form fails like a full disk does: the CSV writer has already written
    the rows before it when it meets this one."""

    def __str__(self) -> str:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "table.csv"
    previous = pd.DataFrame({"x": [1, 2, 3]})
    write_table(previous, path)
    rows = pd.DataFrame({"x": np.arange(300_000, dtype=object)})
    rows.iloc[-1, 0] = _FullDisk()
    with pytest.raises(PathvizError, match=r"cannot write .*table\.csv: no space left"):
        write_table(rows, path)
    pd.testing.assert_frame_equal(pd.read_csv(path), previous)
    assert hidden_leftovers(tmp_path) == []

    parquet = tmp_path / "table.parquet"
    write_table(previous, parquet)
    unserialisable = pd.DataFrame({"x": [1, "two", object()]})  # pyarrow refuses the column
    with pytest.raises(PathvizError, match=r"cannot write .*table\.parquet"):
        write_table(unserialisable, parquet)
    pd.testing.assert_frame_equal(pd.read_parquet(parquet), previous)
    assert hidden_leftovers(tmp_path) == []


def test_unwritable_places_are_one_line_errors(tmp_path):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder.csv").mkdir()
    df = pd.DataFrame({"x": [1]})
    with pytest.raises(PathvizError, match="cannot write .*a_file/t.csv"):
        write_table(df, tmp_path / "a_file" / "t.csv")  # ENOTDIR: root cannot write here either
    with pytest.raises(PathvizError, match="cannot write /proc/t.parquet"):
        write_table(df, "/proc/t.parquet")  # a file system that refuses new files, even to root
    with pytest.raises(PathvizError, match="it is a folder"):
        write_table(df, tmp_path / "a_folder.csv")
    assert hidden_leftovers(tmp_path) == []


def test_atomic_folder_swaps_in_or_keeps_the_old_one(tmp_path):
    target = tmp_path / "store.zarr"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(PathvizError, match="already exists"), atomic_folder(target):
        pass
    with pytest.raises(RuntimeError), atomic_folder(target, overwrite=True) as partial:
        partial.mkdir()
        (partial / "new").write_text("half")
        raise RuntimeError("failed half way")
    assert [p.name for p in target.iterdir()] == ["old"] and hidden_leftovers(tmp_path) == []
    with atomic_folder(target, overwrite=True) as partial:
        partial.mkdir()
        (partial / "new").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new"] and hidden_leftovers(tmp_path) == []


def test_convert_overwrite_replaces_the_pyramid(tmp_path, ome_zarr):
    from napari_pathviz.slide import open_slide

    out = tmp_path / "copy.zarr"
    out.mkdir()
    (out / "stale").write_text("an older conversion")
    code, _, err = run_main("convert", ome_zarr, out, "--chunk", "256")
    assert code == 2 and "already exists; pass --overwrite" in err
    assert (out / "stale").exists()
    code, _, err = run_main("convert", ome_zarr, out, "--chunk", "256", "--overwrite")
    assert code == 0, err
    assert not (out / "stale").exists()
    np.testing.assert_array_equal(
        open_slide(out).levels[0].compute(), open_slide(ome_zarr).levels[0].compute()
    )
    assert hidden_leftovers(tmp_path) == []


# --- bad numbers and files that used to end in a traceback -----------------------------------

DEMO_WEIGHTS = str(Path(__file__).parents[1] / "src/napari_pathviz/data/demo_model.pt")
NORM = ["--mean", "0.8", "0.72", "0.7", "--std", "0.15", "0.18", "0.18"]


def fails_on_second_batch():
    """The demo model, failing like a flaky GPU on its second call with 16 inputs (extract's
    --batch-size 16; 4 patches x 4 samples of a shapley-plot chunk): the first is stored."""
    import warnings

    from napari_pathviz._demo_model import build_demo_model

    model = build_demo_model()
    original, batches = model.forward, []

    def forward(x):
        if len(x) == 16:
            batches.append(len(x))
            warnings.warn("TypedStorage is deprecated", UserWarning, stacklevel=1)  # as torch's
            if len(batches) >= 2:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return original(x)

    model.forward = forward
    return model


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    from napari_pathviz._demo import demo_embeddings_path, ensure_demo_data

    folder = tmp_path_factory.mktemp("bad_files")
    paths = {k: str(v) for k, v in ensure_demo_data().items()}
    emb = pd.read_parquet(demo_embeddings_path())
    feats = [c for c in emb.columns if str(c).startswith("feat_")]
    bad = {
        "huge": emb.assign(**{c: emb[c] * 1e38 for c in feats}),
        "all_nan": emb.assign(**dict.fromkeys(feats, np.nan)),
    }
    for name, frame in bad.items():
        paths[name] = str(folder / f"{name}.parquet")
        frame.to_parquet(paths[name])
    paths["emb"] = str(demo_embeddings_path())
    paths["object_npz"] = str(folder / "object.npz")
    np.savez(paths["object_npz"], features=np.array([[1, "a"], [2, None]], dtype=object))
    paths["ragged_npz"] = str(folder / "ragged.npz")
    np.savez(
        paths["ragged_npz"], features=np.ones((5, 4)), ID=np.array(["s"] * 5), x=np.arange(5),
        y=np.arange(4), patch_size=np.full(5, 64),
    )  # fmt: skip
    paths["no_probs"] = str(folder / "no_probs.csv")
    pd.read_parquet(paths["patches"]).to_csv(paths["no_probs"], index=False)
    return paths


MODEL = ["-m", DEMO_WEIGHTS, "--factory", "napari_pathviz._demo_model:build_demo_model", *NORM]
EXPLAIN = [*MODEL, "--slide", "{slide}", "--patches", "{patches}", "--device", "cpu"]
BAD_INPUTS = [
    (["plot-embeddings", "-i", "{object_npz}", "-o", "{tmp}/u.html"],
     ["object.npz", "'features' holds Python objects"]),
    (["plot-embeddings", "-i", "{ragged_npz}", "-o", "{tmp}/u.html"],
     ["ragged.npz", "different lengths", "y: 4"]),
    (["plot-embeddings", "-i", "{huge}", "-o", "{tmp}/u.html"],
     ["huge.parquet", "3.4e+38", "rescale"]),
    (["plot-embeddings", "-i", "{all_nan}", "-o", "{tmp}/u.html"],
     ["all_nan.parquet", "all 250 embedding rows have NaN or infinite features"]),  # demo v2
    (["plot-embeddings", "-i", "{emb}", "-o", "{tmp}/u.html", "--metric", "bogus"],
     ["--metric", "'bogus'"]),
    (["shapley-plot", *EXPLAIN, "-o", "{tmp}/m.png", "--top", "abc", "dab_positive"],
     ["--top", "whole number", "'abc'"]),
    (["shapley-plot", *EXPLAIN, "-o", "{tmp}/m.png", "--top", "-3", "dab_positive"],
     ["--top", "0 or more", "-3"]),
    (["shapley-plot", *EXPLAIN, "-o", "{tmp}/m.png", "-bs", "-1"], ["-bs/--batch_size", "-1"]),
    (["shapley-plot", *EXPLAIN, "-o", "{tmp}/m.png", "-l", "-1"],
     ["-l/--local_smoothing", "at least 0"]),
    (["plot-predictions", "--slide", "{slide}", "-p", "{patches}", "-o", "{tmp}/p.png",
      "--alpha", "5"], ["--alpha", "from 0 to 1", "got 5"]),
    (["plot-predictions", "--slide", "{slide}", "-p", "{no_probs}", "-o", "{tmp}/p.png"],
     ["no_probs.csv", "no prob_* column", "--column", "dab_positive"]),
    (["render", "{slide}", "-o", "{tmp}/r.png", "--max-size", "-10"], ["--max-size", "-10"]),
    (["render", "{slide}", "-o", "{tmp}/r.png", "--max-size", "0"], ["--max-size", "got 0"]),
    (["plot-image-umap-embeddings", "-e", "{emb}", "-i", "{slide}", "-o", "{tmp}/m.png",
      "--canvas", "200000"], ["--canvas", "16384", "200000"]),
    (["extract", *MODEL, "--slide", "{slide}", "-o", "{tmp}/o.parquet", "--batch-size", "0"],
     ["--batch-size", "got 0"]),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "words"), BAD_INPUTS, ids=lambda v: " ".join(v)[:50])
def test_bad_numbers_and_files_are_one_line(demo_files, tmp_path, argv, words):
    names = {**demo_files, "tmp": str(tmp_path)}
    code, _, err = run_main(*[a.format(**names) for a in argv])
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("command", ["extract", "shapley-plot"])
def test_a_model_failing_in_a_later_batch_keeps_finished_work(demo_files, tmp_path, command):
    """One line naming the failed batch and its first patch, and the batches before it kept
    in the store for the rerun."""
    import zarr

    model = [*MODEL[:3], "test_output_guard:fails_on_second_batch", *NORM]
    store = tmp_path / "work.zarr"
    slide, patches = demo_files["slide"], demo_files["patches"]
    if command == "extract":
        argv = ["extract", *model, "--slide", slide, "--patches", patches, "--device", "cpu",
                "-o", tmp_path / "o.parquet", "--store", store, "--batch-size", "16"]  # fmt: skip
    else:
        argv = ["shapley-plot", *model, "--slide", slide, "--patches", patches, "--device", "cpu",
                "-o", tmp_path / "m.png", "--attributions-out", store, "--ids", *"01234567",
                "--chunk-size", "4", "-bs", "2", "-ns", "4", "--samples-per-batch", "64"]  # fmt: skip
    code, _, err = run_main(*argv)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1, err
    import pandas as pd

    batches = -(-len(pd.read_parquet(patches)) // 16)  # the demo's patches, 16 a batch
    unit = f"batch 2 of {batches}" if command == "extract" else "chunk 2 of 2"
    assert f"the model failed on {unit} (patches demo_ihc x=" in lines[0]
    assert "RuntimeError: CUDA error: an illegal memory access" in lines[0]
    assert f"kept in {store}, a rerun resumes" in lines[0]
    done = zarr.open_group(str(store), mode="r")["done"][:]
    assert done.tolist()[:2] == [True, False] and done.sum() == 1
    assert not (tmp_path / "o.parquet").exists() and not (tmp_path / "m.png").exists()


def test_other_libraries_warnings_only_with_verbose(demo_files, tmp_path):
    """In a real process (pytest records warnings itself): the model's warning stays off stderr,
    where our one line is all, unless --verbose asks for it."""
    argv = ["extract", *MODEL[:3], "test_output_guard:fails_on_second_batch", *NORM,
            "--slide", demo_files["slide"], "--patches", demo_files["patches"], "--device", "cpu",
            "-o", tmp_path / "o.parquet", "--batch-size", "16"]  # fmt: skip
    env = {"PYTHONPATH": str(Path(__file__).parent)}
    quiet = run_cli(*argv, env=env)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    lines = [line for line in error_lines(quiet.stderr) if "%|" not in line]  # tqdm's redraws
    assert len(lines) == 1 and lines[0].startswith("pathviz extract: error: the model failed")
    verbose = run_cli(*argv, "--verbose", env=env)
    assert verbose.returncode == 2 and "UserWarning: TypedStorage is deprecated" in verbose.stderr
