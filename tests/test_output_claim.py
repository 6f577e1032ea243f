"""Two commands writing the same output at once used to both succeed: each checked that the
output did not exist before its work and replaced it after. Now every output of every command
is claimed when the command starts (``.NAME.claim`` beside it, created atomically with the
holder's pid): the second writer is refused in one line naming the output and writes nothing;
a claim left by a process that died is taken over."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest

from napari_pathviz._demo import ensure_demo_data
from napari_pathviz.cli import main
from napari_pathviz.store_lock import OutputClaim, claim_path

WEIGHTS = str(resources.files("napari_pathviz") / "data" / "demo_model.pt")
TESTS = Path(__file__).parent


def _extract(out: Path, *extra: str) -> list[str]:
    demo = ensure_demo_data()
    return [
        os.path.join(os.path.dirname(sys.executable), "pathviz"),
        "extract",
        "-m",
        WEIGHTS,
        "--factory",
        "gated_models:waits_at_the_gate",
        "--slide",
        str(demo["slide"]),
        "--patches",
        str(demo["patches"]),
        "-o",
        str(out),
        "--device",
        "cpu",
        "--no-embeddings",
        *extra,
    ]


def _wait_for(path: Path, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": error: " in line]


def test_two_processes_writing_one_output_one_is_refused(tmp_path):
    out = tmp_path / "pred.parquet"
    gate = tmp_path / "gate"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "PATHVIZ_TEST_GATE": str(gate)}
    first = subprocess.Popen(
        _extract(out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for(gate.with_name("gate.entered"))  # the first one is running its model
        assert claim_path(out).exists()
        record = json.loads(claim_path(out).read_text())
        assert record["pid"] == first.pid and record["host"] == socket.gethostname()
        second = subprocess.run(
            _extract(out, "--overwrite"), env=env, capture_output=True, text=True, timeout=300
        )
    finally:
        gate.touch()
        stdout, stderr = first.communicate(timeout=300)
    assert second.returncode == 2, second.stderr
    errors = _errors(second.stderr)
    assert len(errors) == 1 and "Traceback" not in second.stderr, second.stderr
    assert str(out) in errors[0] and f"process {first.pid}" in errors[0], errors[0]
    assert first.returncode == 0, stderr
    assert len(pd.read_parquet(out)) == len(pd.read_parquet(ensure_demo_data()["patches"]))
    # The claims are gone once the winner is done; no partial or temporary file is left.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "gate",
        "gate.entered",
        "pred.parquet",
        "pred.parquet.store.zarr",
    ]


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


def test_a_claimed_folder_output_is_refused_and_left_alone(tmp_path, capsys):
    """convert writes a folder: a second convert to it while the first holds its claim (here
    this test process) is refused and neither the folder nor its parent is touched."""
    slide = ensure_demo_data()["slide"]
    out = tmp_path / "copy.ome.zarr"
    before = _digest(Path(slide))
    with OutputClaim(out, "OUT"):
        assert main(["convert", str(slide), str(out)]) == 2
    err = capsys.readouterr().err
    errors = _errors(err)
    assert len(errors) == 1 and str(out) in errors[0] and "being written" in errors[0], err
    assert list(tmp_path.iterdir()) == []  # no folder, no claim left
    assert _digest(Path(slide)) == before


def test_a_claim_left_by_a_dead_process_is_taken_over(tmp_path, capsys):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    out = tmp_path / "nested" / "render.png"
    out.parent.mkdir()
    record = {"pid": int(dead.stdout), "host": socket.gethostname(), "token": "x", "time": 0}
    claim_path(out).write_text(json.dumps(record))
    demo = ensure_demo_data()
    code = main(["render", str(demo["slide"]), "-o", str(out), "--max-size", "256"])
    assert code == 0, capsys.readouterr().err
    assert out.stat().st_size > 1000
    assert not claim_path(out).exists()


def test_a_failed_command_leaves_no_claim_nor_folder(tmp_path, capsys):
    """A claim's folders are made only to hold it: a refused command leaves none behind."""
    out = tmp_path / "a" / "b" / "render.png"
    demo = ensure_demo_data()
    argv = ["render", str(demo["slide"]), "-o", str(out), "--patches", str(tmp_path / "no.csv")]
    assert main(argv) == 2
    assert "no.csv" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_claim_names_the_output_and_its_holder(tmp_path):
    out = tmp_path / "x.csv"
    with OutputClaim(out, "-o/--out") as claim:
        assert claim.claim == tmp_path / ".x.csv.claim" and claim.claim.exists()
        from napari_pathviz.errors import PathvizError

        with pytest.raises(PathvizError, match=r"-o/--out .*x\.csv is being written by process"):
            OutputClaim(out, "-o/--out").acquire()
    assert not claim.claim.exists()
