"""What a format reader hands to ``Slide``: per-level array-likes in the file's own axis order.

The readers in this package (``zarr_io``, ``tiff_io``) return a :class:`PyramidSource`; nothing here
knows about napari or about how a slide is displayed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import PathvizError


@dataclass
class PyramidSource:
    """Resolution levels of one image as stored, finest first.

    ``axes`` names each array axis with one letter: ``y``, ``x``, ``c`` and possibly singleton
    ``t``/``z`` axes (OME). PathFlowAI's slides are ``"xyc"``: transposed relative to napari.
    """

    path: str
    arrays: list[Any]
    axes: str
    format: str
    mpp: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


class CheckedArray:
    """Array-like wrapper that turns read failures into one-line errors naming the file and chunk.

    Zarr returns the fill value for a chunk that is not in the store, which silently shows a
    hole in a slide; with ``check_missing`` such a chunk is an error instead. Corrupt chunks raise
    a codec error deep inside zarr or tifffile; we re-raise them naming the file, level and region.
    """

    def __init__(self, array: Any, path: str, level: int, check_missing: bool = False):
        self.array = array
        self.path = path
        self.level = level
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)
        self.chunks = tuple(getattr(array, "shards", None) or array.chunks)
        self._chunk_exists = _chunk_exists_function(array) if check_missing else None

    def __getitem__(self, key: Any) -> np.ndarray:
        if self._chunk_exists is not None:
            self._raise_on_missing_chunk(key)
        try:
            return np.asarray(self.array[key])
        except PathvizError:
            raise
        except Exception as exc:
            raise PathvizError(
                f"{self.path}: level {self.level}: cannot read region {_describe(key)}: "
                f"a chunk is corrupt or unreadable ({type(exc).__name__}: {exc})"
            ) from exc

    def _raise_on_missing_chunk(self, key: Any) -> None:
        key = key if isinstance(key, tuple) else (key,)
        ranges = []
        for dim, (size, chunk) in enumerate(zip(self.shape, self.chunks, strict=True)):
            k = key[dim] if dim < len(key) else slice(None)
            if isinstance(k, slice):
                start, stop, _ = k.indices(size)
            else:
                start, stop = int(k) % size, int(k) % size + 1
            if stop <= start:
                return
            ranges.append(range(start // chunk, (stop - 1) // chunk + 1))
        for coords in np.ndindex(*[len(r) for r in ranges]):
            chunk_coords = tuple(r[i] for r, i in zip(ranges, coords, strict=True))
            name = self._chunk_exists(chunk_coords)
            if name is not None:
                raise PathvizError(
                    f"{self.path}: level {self.level}: chunk {name} is missing "
                    "(open with allow_missing_chunks / --allow-missing-chunks to read it as blank)"
                )


def _chunk_exists_function(array: Any):
    """Returns f(chunk_coords) -> None when the chunk exists, else the chunk's key."""
    metadata = array.metadata
    store = array.store_path.store
    prefix = array.store_path.path
    root = getattr(store, "root", None)

    def key_of(coords: tuple[int, ...]) -> str:
        chunk_key = metadata.encode_chunk_key(coords)
        return f"{prefix}/{chunk_key}" if prefix else chunk_key

    if root is not None and os.path.isdir(str(root)):
        # A local store: a stat per chunk is far cheaper than a round trip through zarr's
        # async loop, and this runs on every region read.
        root = str(root)

        def local_missing(coords):
            key = key_of(coords)
            return None if os.path.exists(os.path.join(root, key)) else key

        return local_missing

    from zarr.core.sync import sync

    def generic_missing(coords):
        key = key_of(coords)
        return None if sync(store.exists(key)) else key

    return generic_missing


def _describe(key: Any) -> str:
    key = key if isinstance(key, tuple) else (key,)
    parts = []
    for k in key:
        if isinstance(k, slice):
            parts.append(f"{k.start or 0}:{'' if k.stop is None else k.stop}")
        else:
            parts.append(str(k))
    return "[" + ", ".join(parts) + "]"
