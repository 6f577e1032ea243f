"""convert after a kill -9 (issue 18, item 11): the killed run's hidden partial pyramid is
recognised by the next convert (its writer's pid is in its name, and that process is gone) and
removed; the rerun succeeds and leaves nothing hidden behind. Tiny chunks are refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np

from napari_pathviz.cli import main
from napari_pathviz.io.atomic import atomic_file, remove_stale_partials
from napari_pathviz.slide import open_slide


def _hidden(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_killed_convert_leaves_nothing_the_next_convert_keeps(tmp_path):
    from napari_pathviz._demo import ensure_demo_data

    source = ensure_demo_data()["slide"]
    out = tmp_path / "copy.ome.zarr"
    run = "import sys; from napari_pathviz.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = [sys.executable, "-c", run, "convert", str(source), str(out)]
    argv += ["--chunk", "64", "--progress", "off"]
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    # Killed as soon as its hidden partial pyramid appears: mid-way through the writing.
    while not any(p.name.startswith(".") and "partial" in p.name for p in tmp_path.iterdir()):
        assert child.poll() is None and time.monotonic() < deadline, "convert never started"
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    left = [n for n in _hidden(tmp_path) if "partial" in n]
    assert left and not out.exists()  # what kill -9 leaves: a hidden partial folder

    assert main(["convert", str(source), str(out), "--chunk", "64", "--progress", "off"]) == 0
    assert [n for n in _hidden(tmp_path) if "partial" in n] == []
    original, copy = open_slide(source), open_slide(out)
    np.testing.assert_array_equal(np.asarray(copy.levels[0]), np.asarray(original.levels[0]))


def test_a_live_writers_partial_is_kept(tmp_path):
    """Another process still writing the same output: its partial folder is not touched."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".table.csv.partial-{sleeper.pid}-0123abcd.csv"
        live.write_text("being written")
        dead = tmp_path / ".table.csv.partial-999999999-89abcdef.csv"
        dead.write_text("left by a killed write")
        with atomic_file(tmp_path / "table.csv") as tmp:
            tmp.write_text("x\n1\n")
        assert live.exists() and not dead.exists()
        remove_stale_partials(tmp_path / "table.csv")
        assert live.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    remove_stale_partials(tmp_path / "table.csv")
    assert not live.exists() and _hidden(tmp_path) == []
    assert (tmp_path / "table.csv").read_text() == "x\n1\n"
    assert os.listdir(tmp_path) == ["table.csv"]


def test_tiny_chunks_are_refused_in_one_line(tmp_path, capsys):
    from napari_pathviz._demo import ensure_demo_data

    source = ensure_demo_data()["slide"]
    out = tmp_path / "c.zarr"
    assert main(["convert", str(source), str(out), "--chunk", "16"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == ["pathviz convert: error: --chunk must be at least 64, got 16"]
    assert os.listdir(tmp_path) == []
