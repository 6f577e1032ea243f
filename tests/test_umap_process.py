"""UMAP in a child process (issue 17 item 5), without napari: the child's layout equals the one
computed in this process for the same seed, its first look comes before it, the neighbour search
reports progress, a cancel kills the child and a bad input comes back as one line."""

from __future__ import annotations

import os
import tempfile
import time
import warnings

import numpy as np
import pytest

from napari_pathviz.embedding import UMAPParams, umap_embed
from napari_pathviz.errors import Cancelled, PathvizError
from napari_pathviz.store import ResultsStore
from napari_pathviz.umap_first_look import FIRST_LOOK_ABOVE, FIRST_LOOK_SIZE
from napari_pathviz.umap_process import (
    UmapProcess,
    idle_pid,
    running_pids,
    stop_idle,
    umap_embed_in_child,
)


def _clusters(n: int, dims: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 6, (5, dims))
    labels = rng.integers(0, 5, n)
    return (centres[labels] + rng.normal(0, 1, (n, dims))).astype(np.float32), labels


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def temp_dir(tmp_path, monkeypatch):
    """A temporary folder of this test's own (others' runs use the system's at the same time)."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_the_child_computes_the_same_layout_after_a_first_look(tmp_path, monkeypatch, temp_dir):
    monkeypatch.setenv("PATHVIZ_CACHE_DIR", str(tmp_path / "cache"))
    n = FIRST_LOOK_ABOVE  # enough for NN-descent and a first look
    features, labels = _clusters(n)
    params = UMAPParams(random_state=0)
    events: list[tuple[str, float, str]] = []
    looks: list[np.ndarray] = []

    def first_look(coords: np.ndarray, note: str) -> None:
        events.append(("first look", -1.0, note))
        looks.append(coords)

    child = umap_embed_in_child(
        features,
        params,
        use_cache=False,
        progress=lambda fraction, stage: events.append(("progress", fraction, stage)),
        first_look=first_look,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        here = umap_embed(features, params, store=ResultsStore(tmp_path / "store"))
    np.testing.assert_allclose(child, here, atol=1e-5)

    # the first look: every patch placed, before the full fit's neighbour search began
    (look,) = looks
    assert look.shape == (n, 2) and np.isfinite(look).all()
    kinds = [kind for kind, _, _ in events]
    searching = [i for i, (_, _, s) in enumerate(events) if "full UMAP: nearest" in s]
    assert kinds.index("first look") < searching[0]
    assert f"UMAP of {FIRST_LOOK_SIZE:,} sampled patches" in events[kinds.index("first look")][2]
    # it already shows the clusters: a patch's nearest neighbour in it is mostly of its cluster
    from sklearn.neighbors import NearestNeighbors

    near = NearestNeighbors(n_neighbors=2).fit(look).kneighbors(look, return_distance=False)
    assert (labels[near[:, 1]] == labels).mean() > 0.9

    # the neighbour search moves the bar several times (it sat still for a minute before)
    during = [f for _, f, s in events if "full UMAP: nearest neighbours" in s]
    assert len(set(during)) >= 3 and during == sorted(during)
    fractions = [f for kind, f, _ in events if kind == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    # the child is kept, idle, for the next UMAP, and holds no copy of the features
    kept = idle_pid()
    assert kept is not None and not running_pids() and not _gone(kept)
    (folder,) = temp_dir.iterdir()
    assert not list(folder.iterdir())

    # the next UMAP runs in the kept child (umap compiled there already): the same result
    again = umap_embed_in_child(features, params, use_cache=False)
    np.testing.assert_allclose(again, child, atol=1e-5)
    assert idle_pid() == kept

    # a kept child serves only callers in the surroundings it started in: another results
    # cache (or temporary folder) gets a new child, and the kept one is stopped
    monkeypatch.setenv("PATHVIZ_CACHE_DIR", str(tmp_path / "another cache"))
    few, _ = _clusters(300)
    umap_embed_in_child(few, params)
    assert _gone(kept) and idle_pid() not in (None, kept)
    assert [p for p in (tmp_path / "another cache").rglob("*") if p.is_file()]  # used there
    stop_idle()
    kept = None
    assert idle_pid() is None and not list(temp_dir.iterdir())


def test_cancel_kills_the_child_and_removes_its_files(tmp_path, monkeypatch, temp_dir):
    monkeypatch.setenv("PATHVIZ_CACHE_DIR", str(tmp_path / "cache"))
    features, _ = _clusters(20_000)
    stop_at = [None]

    def cancelled() -> bool:
        return stop_at[0] is not None and time.monotonic() >= stop_at[0]

    with UmapProcess() as child:
        pid, folder = child.process.pid, child._folder
        updates = child.run(features, UMAPParams(), use_cache=False, cancelled=cancelled)
        first = next(updates)  # the child is working
        assert 0.0 <= first.fraction < 0.5 and not _gone(pid)
        stop_at[0] = time.monotonic()
        t0 = time.monotonic()
        with pytest.raises(Cancelled):
            for _ in updates:
                pass
        assert time.monotonic() - t0 < 5.0  # promptly
        assert _gone(pid) and child.process.poll() is not None
        assert not os.path.exists(folder)
    assert pid not in running_pids()


def test_a_bad_input_comes_back_as_one_line_and_leaves_nothing(tmp_path, monkeypatch, temp_dir):
    monkeypatch.setenv("PATHVIZ_CACHE_DIR", str(tmp_path / "cache"))
    features, _ = _clusters(10)
    with pytest.raises(PathvizError, match="needs more than 15 patches; 10 given"):
        umap_embed_in_child(features, UMAPParams(), use_cache=False)
    assert not running_pids() and idle_pid() is None  # a child that failed is not kept
    assert not list(temp_dir.iterdir())
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # no result stored
