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


def read_h5_features(path: str | os.PathLike) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows (keys as in :func:`read_coords_table`) and the (N, D) float32 ``features`` of a
    CLAM/TRIDENT feature ``.h5``; the row counts of both datasets must agree."""
    path = str(path)
    with _open(path) as f:
        if "features" not in f:
            raise PathvizError(
                f"{path}: no 'features' dataset (datasets: {_names(f)}); a patch file holds "
                "coordinates only: pass it as the patch table (--patches) instead"
            )
        coords, attrs = _coords(f, path)
        features = _feature_matrix(f["features"], path)
    if len(features) != len(coords):
        raise PathvizError(
            f"{path}: 'features' has {len(features)} rows but 'coords' has {len(coords)}; "
            "they must describe the same patches"
        )
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
    coords = np.asarray(dataset[()])
    if coords.ndim == 3 and coords.shape[0] == 1:
        coords = coords[0]  # a batch of one slide
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise PathvizError(
            f"{path}: 'coords' must be (patches x 2) level-0 x, y, found shape {coords.shape}"
        )
    if not np.issubdtype(coords.dtype, np.number):
        raise PathvizError(f"{path}: 'coords' holds {coords.dtype}, not numbers")
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


def _feature_matrix(data, path: str) -> np.ndarray:
    array = np.asarray(data[()] if hasattr(data, "attrs") else data)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]  # (1, N, D): a bag of one slide
    if array.ndim != 2:
        raise PathvizError(
            f"{path}: features must be a 2-D (patches x features) array, found shape {array.shape}"
        )
    if not np.issubdtype(array.dtype, np.number):
        raise PathvizError(f"{path}: features hold {array.dtype}, not numbers")
    return array.astype(np.float32, copy=False)
