"""The results store on disk: computed arrays keyed by a hash of their inputs and parameters.

Reopening a result is a file read; a crash mid-write never leaves a half file under a valid key
(writes go to a temporary name, then rename).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .errors import PathvizError


def cache_root() -> Path:
    """$PATHVIZ_CACHE_DIR, else ~/.cache/napari-pathviz."""
    base = os.environ.get("PATHVIZ_CACHE_DIR")
    return Path(base) if base else Path.home() / ".cache" / "napari-pathviz"


def array_key(*arrays: np.ndarray, **params) -> str:
    """A stable hash of arrays (dtype, shape, bytes) and JSON-able parameters."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    digest.update(json.dumps(params, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


class ResultsStore:
    """Arrays by (kind, key) under one folder: ``{root}/{kind}/{key}.npy``."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root else cache_root() / "results"

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{key}.npy"

    def get(self, kind: str, key: str) -> np.ndarray | None:
        path = self.path(kind, key)
        if not path.exists():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # a damaged entry is recomputed, not trusted

    def put(self, kind: str, key: str, array: np.ndarray) -> Path:
        path = self.path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, np.asarray(array))
        os.replace(tmp, path)
        return path


def open_job_store(path, job: str, *, option: str, kind: str, differs: str):
    """The zarr group of a resumable job and whether it was reopened: in memory when ``path``
    is None; reopened when it holds ``job``; created empty otherwise. The caller creates its
    arrays in a new group, then sets ``attrs["job"]`` (last, so a crash in between leaves a
    group that is not taken for a finished setup). A file, a non-zarr folder, or another job's
    store is refused, naming ``option`` and what ``differs`` between jobs."""
    import zarr

    if path is None:
        return zarr.open_group(zarr.storage.MemoryStore(), mode="w"), False
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PathvizError(f"{option} {path}: is a file, not a store folder")
    if path.exists() and any(path.iterdir()):
        try:
            root = zarr.open_group(str(path), mode="a")
        except Exception as exc:
            raise PathvizError(f"{option} {path}: not a store of pathviz {kind} ({exc})") from None
        if root.attrs.get("job") != job:
            raise PathvizError(
                f"{path}: holds {kind} of another job ({differs}); "
                f"remove it or choose another {option}"
            )
        return root, True
    return zarr.open_group(str(path), mode="w"), False
