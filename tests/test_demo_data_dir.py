"""The demo writes only into a folder it owns (issue 18, item 8): a folder holding a user's own
``patches.parquet`` or ``demo_ihc.ome.zarr`` is refused in one line and left as it was."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from napari_pathviz._demo import DEMO_MARKER, DEMO_VERSION, demo_dir, ensure_demo_data
from napari_pathviz.cli import main
from napari_pathviz.errors import PathvizError


def _checksums(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _users_folder(root: Path) -> Path:
    folder = root / "my_project"
    (folder / "demo_ihc.ome.zarr").mkdir(parents=True)
    (folder / "demo_ihc.ome.zarr" / "zarr.json").write_text('{"my": "own slide"}')
    (folder / "patches.parquet").write_bytes(b"my own patch table, a week of work")
    return folder


def test_demo_refuses_a_folder_of_the_users_files(tmp_path, capsys):
    folder = _users_folder(tmp_path)
    before = _checksums(folder)
    out = tmp_path / "out"
    argv = ["demo", "--headless", "--data-dir", str(folder), "--out", str(out)]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "my_project" in err[0] and DEMO_MARKER in err[0], err
    assert _checksums(folder) == before
    assert sorted(p.name for p in folder.iterdir()) == ["demo_ihc.ome.zarr", "patches.parquet"]
    assert not out.exists()


def test_demo_data_never_replace_files_without_the_marker(tmp_path):
    folder = _users_folder(tmp_path)
    (folder / "patches.parquet").unlink()  # only the slide: the demo would have rmtree'd it
    before = _checksums(folder)
    with pytest.raises(PathvizError, match="my_project"):
        ensure_demo_data(folder)
    assert _checksums(folder) == before


def test_demo_builds_into_a_new_folder_and_reuses_it(tmp_path):
    folder = tmp_path / "fresh"
    paths = ensure_demo_data(folder)
    assert (folder / DEMO_MARKER).is_file()
    stamp = paths["patches"].stat().st_mtime_ns
    assert ensure_demo_data(folder) == paths  # the marker makes the folder the demo's own
    assert paths["patches"].stat().st_mtime_ns == stamp


def test_default_demo_folder_lives_in_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("PATHVIZ_DEMO_DIR", raising=False)
    monkeypatch.setenv("PATHVIZ_CACHE_DIR", str(tmp_path / "cache"))
    assert demo_dir() == tmp_path / "cache" / f"demo-v{DEMO_VERSION}"
