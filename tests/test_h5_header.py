"""CLAM/TRIDENT ``.h5`` features are checked from the file's header before any data are read
(issue 18, item 9): a tiny file declaring a huge dataset is refused in one line without
allocating it, a wrong width is refused before the features are read, and features are read in
blocks, each checked for NaN."""

from __future__ import annotations

import tracemalloc

import h5py
import numpy as np
import pytest

from napari_pathviz.cli import main
from napari_pathviz.errors import PathvizError
from napari_pathviz.io import clam_h5
from napari_pathviz.io.clam_h5 import read_h5_features

MB = 1 << 20


def _hollow_h5(path, rows: int = 10**8, width: int = 1024):
    """A few KB on disk that declare rows x width float32 features: chunked datasets with no
    chunk written (HDF5 hands back fill values for them)."""
    with h5py.File(path, "w") as f:
        f.create_dataset("features", shape=(rows, width), chunks=(1024, 64), dtype="f4")
        f.create_dataset("coords", shape=(rows, 2), chunks=(4096, 2), dtype="i8")
    return path


def _zero_features_h5(path, rows: int, width: int, coords: bool = True):
    """A real (rows x width) float32 feature file, written a block at a time and compressed,
    so that it is small on disk but large when read."""
    with h5py.File(path, "w") as f:
        ds = f.create_dataset(
            "features", shape=(rows, width), chunks=(1000, width), dtype="f4", compression="gzip"
        )
        for start in range(0, rows, 5000):
            ds[start : start + 5000] = np.full((min(5000, rows - start), width), 0.5, "f4")
        if coords:
            xy = np.stack([np.arange(rows) % 1000 * 64, np.arange(rows) // 1000 * 64], axis=1)
            f.create_dataset("coords", data=xy.astype(np.int64))
    return path


def _peak_bytes(call) -> int:
    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_a_tiny_file_declaring_terabytes_is_one_line_without_allocating(tmp_path, capsys):
    h5 = _hollow_h5(tmp_path / "hollow.h5")
    assert h5.stat().st_size < 64 * 1024
    out = tmp_path / "u.html"
    argv = ["plot-embeddings", "-i", str(h5), "-o", str(out)]
    assert main(argv) == 2  # first run: every import done, so the second measures the reading
    capsys.readouterr()
    peak = _peak_bytes(lambda: main(argv))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "hollow.h5" in err[0] and "Traceback" not in err[0], err
    assert peak < 32 * MB, f"{peak / MB:.0f} MB allocated for a refused file"
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hollow.h5"]


def test_a_partly_written_dataset_is_refused_as_damaged(tmp_path):
    h5 = _hollow_h5(tmp_path / "partial.h5", rows=5000, width=64)
    with h5py.File(h5, "r+") as f:
        f["features"][:1024] = 1.0  # one chunk of five
        f["coords"][:] = 0
    with pytest.raises(PathvizError, match=r"partial.h5: 'features' .* only 1 of its 5 chunks"):
        read_h5_features(h5)


def test_the_width_is_compared_before_the_features_are_read(tmp_path):
    h5 = _zero_features_h5(tmp_path / "wide.h5", rows=60_000, width=1024)  # 245 MB as float32
    assert h5.stat().st_size < 8 * MB
    messages = []

    def read() -> None:
        with pytest.raises(PathvizError) as refused:
            read_h5_features(h5, 16, consumer="the head of card.json")
        messages.append(str(refused.value))

    peak = _peak_bytes(read)
    assert messages == [f"{h5}: features of size 1024, but the head of card.json takes 16"]
    assert peak < 8 * MB, f"{peak / MB:.0f} MB read before the width was compared"


def test_features_are_read_in_blocks_and_match_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(clam_h5, "_BLOCK_BYTES", 3000 * 8 * 8)  # ~3000 rows a block
    rng = np.random.default_rng(0)
    values = rng.normal(size=(10_007, 8))  # float64 on disk; chunks that do not divide the rows
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("features", data=values[None], chunks=(1, 700, 8))  # a bag of one
        f.create_dataset("coords", data=np.arange(2 * len(values)).reshape(-1, 2) * 64)
    rows, features = read_h5_features(tmp_path / "f.h5")
    assert features.dtype == np.float32 and features.shape == values.shape
    np.testing.assert_array_equal(features, values.astype(np.float32))
    assert rows["x"].tolist() == (np.arange(0, 2 * len(values), 2) * 64).tolist()


def test_nan_is_refused_by_row_in_a_later_block(tmp_path, monkeypatch):
    monkeypatch.setattr(clam_h5, "_BLOCK_BYTES", 1000 * 16 * 4)
    h5 = _zero_features_h5(tmp_path / "nan.h5", rows=10_000, width=16)
    with h5py.File(h5, "r+") as f:
        f["features"][7321, 3] = np.inf
    with pytest.raises(PathvizError, match=r"nan.h5: row 7321: a feature is NaN or infinite"):
        read_h5_features(h5, 16, finite=True)
    _, features = read_h5_features(h5, 16)  # for a UMAP such rows are dropped later, not here
    assert np.isinf(features[7321, 3])
