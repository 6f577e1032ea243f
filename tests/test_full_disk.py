"""A full disk is reported in one line naming the output being written (issue 18, item 11), also
where the failing write names no file (zarr's chunk writes in a results store), and nothing
half-written is left under an output's name. A real full disk cannot be made here: the writes
fail as the operating system fails them, OSError(ENOSPC) without a file name."""

from __future__ import annotations

import errno
import os

import pandas as pd
import pytest
import zarr.storage._local as zarr_local

from napari_pathviz.cli import main
from napari_pathviz.errors import PathvizError
from napari_pathviz.io.atomic import atomic_file

MODEL = [
    *("--factory", "napari_pathviz._demo_model:build_demo_model"),
    *("--mean", "0.8", "0.72", "0.7", "--std", "0.15", "0.18", "0.18"),
]


def _disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write(2) fails: no file named


def test_a_full_disk_in_a_results_store_names_the_outputs(tmp_path, monkeypatch, capsys):
    from importlib import resources

    from napari_pathviz._demo import ensure_demo_data

    weights = resources.files("napari_pathviz") / "data" / "demo_model.pt"
    demo = ensure_demo_data()
    out, store = tmp_path / "out.parquet", tmp_path / "run.zarr"
    monkeypatch.setattr(zarr_local, "_put", _disk_full)
    argv = ["extract", "-m", str(weights), *MODEL, "--slide", str(demo["slide"])]
    argv += ["--patches", str(demo["patches"]), "-o", str(out), "--store", str(store)]
    argv += ["--device", "cpu"]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == [
        f"pathviz extract: error: cannot write {out} and {store}: no space left on the device"
    ]
    assert not out.exists()


def test_a_full_disk_under_atomic_file_names_the_path_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("x\n1\n")
    with pytest.raises(PathvizError) as refused, atomic_file(path) as tmp:
        pd.DataFrame({"x": [2]}).to_csv(tmp)
        _disk_full()
    assert str(refused.value) == f"cannot write {path}: no space left on the device"
    assert path.read_text() == "x\n1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]
