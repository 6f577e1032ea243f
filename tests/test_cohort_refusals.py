"""Cohort inputs that used to be accepted silently: a slides table without rows (exit 0 having
done nothing) and an output folder that is the cohort's own slides folder (tables, stores and
logs written among the slides, which the README says is refused). Each is now one line, exit 2,
and nothing is written."""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_pathviz._demo import ensure_demo_data
from napari_pathviz.cli import main
from napari_pathviz.cohort_data import read_slides_table
from napari_pathviz.errors import PathvizError

WEIGHTS = str(resources.files("napari_pathviz") / "data" / "demo_model.pt")


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _one_error(err: str) -> str:
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_a_slides_table_without_rows_is_refused(tmp_path, capsys):
    table = tmp_path / "slides.csv"
    table.write_text("ID,path,site\n")
    with pytest.raises(PathvizError, match=r"slides\.csv: the slides table has no rows"):
        read_slides_table(table)
    patches = ensure_demo_data()["patches"]
    keys = pd.read_parquet(patches)[["ID", "x", "y", "patch_size"]]
    emb = tmp_path / "emb.parquet"
    features = np.random.default_rng(0).normal(size=(len(keys), 8)).astype(np.float32)
    pd.concat([keys, pd.DataFrame(features).add_prefix("feat_")], axis=1).to_parquet(emb)
    out = tmp_path / "out"
    out.mkdir()
    argv = ["plot-embeddings", "-i", str(emb), "--slides", str(table), "-o", str(out / "u.html")]
    assert main([*argv, "--batch-score", "site"]) == 2
    assert "slides.csv" in _one_error(capsys.readouterr().err)
    assert list(out.iterdir()) == []


def test_explaining_a_cohort_from_an_empty_slides_table_is_refused(tmp_path, capsys):
    table = tmp_path / "slides.csv"
    table.write_text("ID,path\n")
    out = tmp_path / "maps"
    argv = [
        "gradcam",
        "-m",
        WEIGHTS,
        "--slide",
        str(table),
        "--patches",
        str(ensure_demo_data()["patches"]),
        "--top",
        "2",
        "dab_positive",
        "-o",
        str(out),
        "--device",
        "cpu",
    ]
    assert main(argv) == 2
    assert "no rows" in _one_error(capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.parametrize("command", ["extract", "gradcam"])
def test_a_cohort_output_folder_is_never_its_slides_folder(tmp_path, capsys, command):
    slides = tmp_path / "slides"
    slides.mkdir()
    demo = ensure_demo_data()
    import shutil

    shutil.copytree(demo["slide"], slides / "a.ome.zarr")
    shutil.copytree(demo["slide"], slides / "b.ome.zarr")
    before = _tree(slides)
    for out in (slides, tmp_path):  # the slides' folder, or a folder holding it
        argv = [command, "-m", WEIGHTS, "--slide", str(slides), "-o", str(out), "--device", "cpu"]
        if command == "gradcam":
            argv += ["--patches", str(demo["patches"]), "--top", "2", "dab_positive"]
        assert main(argv) == 2
        line = _one_error(capsys.readouterr().err)
        assert "slides' folder" in line and str(out) in line, line
        assert _tree(slides) == before
        assert sorted(p.name for p in slides.iterdir()) == ["a.ome.zarr", "b.ome.zarr"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["slides"]


def test_the_cohort_explorer_refuses_an_empty_slides_table(
    make_napari_viewer, qtbot, tmp_path, notifications
):
    pytest.importorskip("napari")
    patches = ensure_demo_data()["patches"]
    keys = pd.read_parquet(patches)[["ID", "x", "y", "patch_size"]]
    features = np.random.default_rng(0).normal(size=(len(keys), 8)).astype(np.float32)
    emb = tmp_path / "emb.parquet"
    pd.concat([keys, pd.DataFrame(features).add_prefix("feat_")], axis=1).to_parquet(emb)
    table = tmp_path / "slides.csv"
    table.write_text("ID,path,site\n")
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-pathviz", "Cohort explorer")
    widget.embeddings_path.value = str(emb)
    widget.slides_table_path.value = str(table)
    widget.load_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.load_button.enabled and "no rows" in widget.status.value)
    assert widget.status.value == f"{table}: the slides table has no rows (no slides)"
    assert any(m == widget.status.value for m in notifications)
    assert widget.frame is None
