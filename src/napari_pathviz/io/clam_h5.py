"""CLAM, TRIDENT and WSInfer HDF5 patch files, and their feature files (``.h5`` and ``.pt``).

What the three tools write (read from their sources):

- CLAM ``create_patches_fp.py`` (``WholeSlideImage.process_contour`` + ``save_hdf5``): dataset
  ``coords`` (N, 2) int, each row the level-0 (x, y) of a patch's top-left corner; attributes
  ``patch_size`` (pixels at ``patch_level``), ``patch_level``, ``downsample`` (that level's
  (x, y) downsample), ``level_dim``, ``downsampled_level_dim``, ``name`` (the slide).
  CLAM reads a patch as ``patch_size * int(downsample)`` level-0 pixels; TRIDENT's reader of
  these "legacy" files also multiplies by ``custom_downsample`` (default 1). We do the same.
- CLAM ``extract_features_fp.py``: ``features`` (N, D) float32 and ``coords`` (N, 2), *without*
  attributes, in ``h5_files/{slide}.h5``; and the same features as a bare tensor in
  ``pt_files/{slide}.pt`` (``torch.save(features)``), rows in the order of the ``.h5``.
- TRIDENT (``IO.coords_to_h5``): ``coords`` with ``patch_size`` (at the target magnification),
  ``patch_size_level0``, ``level0_magnification``, ``target_magnification``, ``overlap``,
  ``name``, ``level0_width``, ``level0_height``; its feature ``.h5`` has ``features`` and
  ``coords`` (attributes copied), its ``.pt`` a bare tensor.
- WSInfer (``patchlib``): ``/coords`` with ``patch_size`` (level 0) and ``patch_level`` 0.

Everything here returns plain DataFrames (ID, x, y, patch_size) and float32 arrays; the patch
key is the same as everywhere else, so features join patches by coordinates.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ..errors import PathvizError

H5_SUFFIXES = (".h5", ".hdf5")


def is_h5_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(H5_SUFFIXES)


def read_coords_table(path: str | os.PathLike) -> pd.DataFrame:
    """The patches of a CLAM/TRIDENT/WSInfer ``.h5``: ID (when the file names its slide), x, y
    and patch_size (level-0 pixels, when the attributes tell it; otherwise left out, and the
    caller's --patch-size serves)."""
    path = str(path)
    with _open(path) as f:
        coords, attrs = _coords(f, path)
    return _coords_frame(coords, attrs, path)


def read_h5_features(
    path: str | os.PathLike,
    feature_dim: int | None = None,
    *,
    consumer: str = "the model",
    finite: bool = False,
) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows (keys as in :func:`read_coords_table`) and the (N, D) float32 ``features`` of a
    CLAM/TRIDENT feature ``.h5``; the row counts of both datasets must agree.

    Shapes, types and sizes are checked from the file's header before any data are read (a
    small file may declare terabytes); ``feature_dim``, when given, is the width ``consumer``
    takes. The features are then read in blocks, each checked for NaN/inf when ``finite``."""
    path = str(path)
    with _open(path) as f:
        if "features" not in f:
            raise PathvizError(
                f"{path}: no 'features' dataset (datasets: {_names(f)}); a patch file holds "
                "coordinates only: pass it as the patch table (--patches) instead"
            )
        dataset = f["features"]
        n, width = _matrix_header(dataset, "features", path)
        if feature_dim is not None and width != feature_dim:
            raise PathvizError(
                f"{path}: features of size {width}, but {consumer} takes {feature_dim}"
            )
        n_coords = _matrix_header(f["coords"], "coords", path)[0] if "coords" in f else None
        if n_coords is not None and n != n_coords:
            raise PathvizError(
                f"{path}: 'features' has {n} rows but 'coords' has {n_coords}; "
                "they must describe the same patches"
            )
        coords, attrs = _coords(f, path)
        features = _read_features(dataset, n, width, path, finite)
    return _coords_frame(coords, attrs, path), features


def read_feature_tensor(path: str | os.PathLike) -> np.ndarray | None:
    """A bare feature tensor saved with ``torch.save`` (CLAM's and TRIDENT's ``.pt``), loaded
    with ``weights_only=True`` (data, never code). None when the file holds anything else, so
    the caller can try other readings of a ``.pt`` (PathFlowAI's pickled dict)."""
    import pickle

    import torch

    try:
        # TRIDENT saves a numpy array (torch.save(features)): numpy's array constructors are
        # allowed as data; anything else a pickle names is still refused by weights_only.
        with torch.serialization.safe_globals(_numpy_array_globals()):
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, AttributeError, ValueError):
        return None  # not a plain tensor file (a pickle with objects, or no torch file at all)
    if isinstance(data, dict) and len(data) == 1:
        data = next(iter(data.values()))  # {"features": tensor} is a common variant
    if isinstance(data, torch.Tensor):
        data = data.detach().float().numpy()
    if not isinstance(data, np.ndarray) or not np.issubdtype(data.dtype, np.number):
        return None
    return _feature_matrix(data, str(path))


def _numpy_array_globals() -> list:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1
        from numpy.core.multiarray import _reconstruct
    dtypes = [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64)]
    return [_reconstruct, np.ndarray, np.dtype, *dtypes]


def check_against_level0(frame: pd.DataFrame, attrs: dict, path: str) -> None:
    """TRIDENT records the slide's level-0 size: a patch outside it is refused without a slide."""
    width, height = attrs.get("level0_width"), attrs.get("level0_height")
    if width is None or height is None or "patch_size" not in frame.columns:
        return
    x, y, p = (frame[c].to_numpy() for c in ("x", "y", "patch_size"))
    bad = np.flatnonzero((x < 0) | (y < 0) | (x + p > int(width)) | (y + p > int(height)))
    if bad.size:
        i = int(bad[0])
        raise PathvizError(
            f"{path}: row {i}: patch x={x[i]}, y={y[i]}, size {p[i]} lies outside the slide "
            f"({int(width)} wide x {int(height)} high, its level0_width/level0_height); "
            f"{bad.size} such rows"
        )


def _open(path: str):
    import h5py

    if not os.path.exists(path):
        raise PathvizError(f"{path}: no such file or directory")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise PathvizError(f"{path}: not a readable HDF5 file ({exc})") from exc


def _names(f) -> str:
    return ", ".join(sorted(f.keys())) or "none"


def _coords(f, path: str) -> tuple[np.ndarray, dict]:
    if "coords" not in f:
        raise PathvizError(
            f"{path}: no 'coords' dataset (datasets: {_names(f)}); expected a CLAM/TRIDENT "
            "patch or feature file"
        )
    dataset = f["coords"]
    _, width = _matrix_header(dataset, "coords", path)
    if width != 2:
        raise PathvizError(
            f"{path}: 'coords' must be (patches x 2) level-0 x, y, found shape {dataset.shape}"
        )
    coords = np.asarray(dataset[()])
    if coords.ndim == 3:
        coords = coords[0]  # a batch of one slide
    attrs = {k: _plain(v) for k, v in dataset.attrs.items()}
    return coords, attrs


def _plain(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _coords_frame(coords: np.ndarray, attrs: dict, path: str) -> pd.DataFrame:
    frame = pd.DataFrame({"x": coords[:, 0], "y": coords[:, 1]})
    # The slide: the file's "name" attribute, else its name, as CLAM and TRIDENT call their
    # files {slide}.h5 (CLAM's feature files carry no attributes).
    name = attrs.get("name")
    if not (isinstance(name, str) and name and name != "None"):
        name = file_stem(path)
    frame.insert(0, "ID", name)
    size = level0_patch_size(attrs, path)
    if size is not None:
        frame["patch_size"] = size
    check_against_level0(frame, attrs, path)
    return frame


def file_stem(path: str) -> str:
    """A tool's per-slide output file named {slide}.h5 / .csv / .geojson: the slide ID."""
    name = os.path.basename(str(path).rstrip("/"))
    return name.rsplit(".", 1)[0] if "." in name else name


def level0_patch_size(attrs: dict, path: str) -> int | None:
    """A patch's side in level-0 pixels from the ``coords`` attributes, or None when they do
    not tell it (CLAM's feature files carry no attributes)."""
    if "patch_size_level0" in attrs:  # TRIDENT
        return _positive_whole(attrs["patch_size_level0"], "patch_size_level0", path)
    if "patch_size" not in attrs:
        return None
    size = _positive_whole(attrs["patch_size"], "patch_size", path)
    custom = _positive_whole(attrs.get("custom_downsample", 1), "custom_downsample", path)
    downsample = attrs.get("downsample")
    if downsample is None:
        if int(attrs.get("patch_level", 0) or 0) != 0:
            raise PathvizError(
                f"{path}: patch_size {size} is at patch_level {attrs['patch_level']} and the "
                "file has no 'downsample' attribute; give the level-0 patch size (--patch-size)"
            )
        return size * custom
    factors = np.atleast_1d(np.asarray(downsample, dtype=float))
    # CLAM reads patch_size * int(downsample) level-0 pixels (WholeSlideImage.process_contours).
    ints = {int(v) for v in factors}
    if len(ints) != 1 or min(ints) < 1:
        raise PathvizError(
            f"{path}: 'downsample' {list(factors)} differs between x and y; a patch must be "
            "square in level-0 pixels"
        )
    return size * ints.pop() * custom


def _positive_whole(value, name: str, path: str) -> int:
    try:
        number = float(np.asarray(value).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        raise PathvizError(f"{path}: attribute {name} is not a number ({value!r})") from None
    if not np.isfinite(number) or number < 1 or number != round(number):
        raise PathvizError(f"{path}: attribute {name} must be a positive whole number ({value!r})")
    return int(number)


def _feature_matrix(array: np.ndarray, path: str) -> np.ndarray:
    """A feature tensor already in memory (a ``.pt``) as an (N, D) float32 matrix."""
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]  # (1, N, D): a bag of one slide
    if array.ndim != 2:
        raise PathvizError(
            f"{path}: features must be a 2-D (patches x features) array, found shape {array.shape}"
        )
    if not np.issubdtype(array.dtype, np.number):
        raise PathvizError(f"{path}: features hold {array.dtype}, not numbers")
    return array.astype(np.float32, copy=False)


_BLOCK_BYTES = 32 << 20  # features are read this much at a time, never the whole dataset at once


def _matrix_header(dataset, name: str, path: str) -> tuple[int, int]:
    """(rows, columns) of a 2-D numeric dataset (or a (1, N, D) bag), from the header alone:
    refused when it is not one, when its data would not fit in memory, or when the file does
    not hold the data it declares (a damaged or truncated file)."""
    import h5py

    shape, dtype = dataset.shape, dataset.dtype
    if shape is None or not isinstance(dataset, h5py.Dataset):
        raise PathvizError(f"{path}: '{name}' is not an array")
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 2:
        raise PathvizError(
            f"{path}: '{name}' must be a 2-D (patches x values) array, found shape {dataset.shape}"
        )
    if dtype.kind not in "biuf":
        raise PathvizError(f"{path}: '{name}' holds {dtype}, not numbers")
    need = int(np.prod(shape, dtype=np.float64) * max(dtype.itemsize, 4))
    memory = _physical_memory()
    if memory and need > memory:
        raise PathvizError(
            f"{path}: '{name}' declares {shape[0]} x {shape[1]} values ({need / 2**30:.1f} GiB), "
            f"more than this machine's memory ({memory / 2**30:.1f} GiB)"
        )
    _check_stored(dataset, name, path)
    return int(shape[0]), int(shape[1])


def _check_stored(dataset, name: str, path: str) -> None:
    """Refuses a dataset whose data the file does not hold: HDF5 hands back fill values for
    chunks never written, so a 4 KB file can declare any size."""
    if dataset.size == 0:
        return
    if dataset.chunks is not None:
        expected = int(
            np.prod([-(-n // c) for n, c in zip(dataset.shape, dataset.chunks, strict=True)])
        )
        stored = dataset.id.get_num_chunks()
        if stored < expected:
            raise PathvizError(
                f"{path}: '{name}' declares shape {dataset.shape} but stores only {stored} of its "
                f"{expected} chunks (a damaged or truncated file)"
            )
    elif dataset.id.get_storage_size() == 0:
        raise PathvizError(
            f"{path}: '{name}' declares shape {dataset.shape} but stores no data (a damaged or "
            "truncated file)"
        )


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not POSIX: no limit known
        return None


def _read_features(dataset, n: int, width: int, path: str, finite: bool) -> np.ndarray:
    """The (n, width) features as float32, read a block of rows at a time (a float64 file is
    never held whole beside its float32 copy); with ``finite``, the first row holding NaN/inf
    is refused as soon as its block is read."""
    bag = len(dataset.shape) == 3
    step = max(1, _BLOCK_BYTES // max(1, width * dataset.dtype.itemsize))
    if dataset.chunks is not None:  # whole chunks per read
        rows_per_chunk = dataset.chunks[1 if bag else 0]
        step = max(rows_per_chunk, step // rows_per_chunk * rows_per_chunk)
    out = np.empty((n, width), np.float32)
    for start in range(0, n, step):
        stop = min(n, start + step)
        block = dataset[0, start:stop] if bag else dataset[start:stop]
        out[start:stop] = block
        if finite:
            bad = np.flatnonzero(~np.isfinite(out[start:stop]).all(axis=1))
            if bad.size:
                raise PathvizError(
                    f"{path}: row {start + int(bad[0])}: a feature is NaN or infinite"
                )
    return out
