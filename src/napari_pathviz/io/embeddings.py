"""Patch embeddings in: Parquet/CSV tables, .npy/.npz arrays with a key table, and PathFlowAI's
``embeddings.pkl`` (a pickle: read only when the caller says the file is trusted).

Every reader returns the same thing: a key/attribute DataFrame (one row per patch, with the key
columns it has) and an (N, D) float32 feature matrix in the same row order.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import PathvizError
from .tables import read_table

EMBEDDING_SUFFIXES = (
    *(".parquet", ".pq", ".csv", ".tsv", ".npy", ".npz", ".pkl", ".pickle", ".pt"),
    *(".h5", ".hdf5"),
)
_PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt")
_FEATURE_PREFIX = re.compile(r"^feat_(\d+)$")


@dataclass
class RawEmbeddings:
    """Rows as read: ``rows`` holds keys and attributes, ``features`` the matching vectors."""

    rows: pd.DataFrame
    features: np.ndarray
    source: str


def feature_columns(columns) -> list:
    """The feature columns of a table: ``feat_{j}`` (pathviz), else integer names (PathFlowAI)."""
    prefixed = [c for c in columns if _FEATURE_PREFIX.match(str(c))]
    if prefixed:
        return sorted(prefixed, key=lambda c: int(_FEATURE_PREFIX.match(str(c)).group(1)))
    numbered = [c for c in columns if str(c).isdigit()]
    return sorted(numbered, key=lambda c: int(str(c)))


def read_embeddings(
    path: str | os.PathLike, *, keys: str | os.PathLike | None = None, trust_pickle: bool = False
) -> RawEmbeddings:
    """Reads embeddings from any supported file; ``keys`` is the key table for .npy/.npz and a
    bare .pt tensor (a CLAM/TRIDENT .h5 serves)."""
    path = str(path)
    if not os.path.exists(path):
        raise PathvizError(f"{path}: no such file or directory")
    lower = path.lower()
    if lower.endswith((".h5", ".hdf5")):  # CLAM/TRIDENT features with their coords
        from .clam_h5 import read_h5_features

        return RawEmbeddings(*read_h5_features(path), path)
    if lower.endswith(".pt"):  # CLAM/TRIDENT: a bare tensor, loaded as data (weights_only)
        tensor = _feature_tensor(path)
        if tensor is not None:
            return _keyed_tensor(tensor, path, keys)
    if lower.endswith(_PICKLE_SUFFIXES):
        return _read_pathflowai_pickle(path, trust_pickle)
    if lower.endswith((".npy", ".npz")):
        return _read_array(path, keys)
    if lower.endswith((".parquet", ".pq", ".csv", ".tsv")):
        df = read_table(path)
        columns = feature_columns(df.columns)
        if not columns:
            raise PathvizError(
                f"{path}: no feature columns (expected feat_0, feat_1, ... or 0, 1, ...)"
            )
        features = _as_float_matrix(df[columns], path)
        return RawEmbeddings(df.drop(columns=columns).reset_index(drop=True), features, path)
    raise PathvizError(f"{path}: not an embeddings format ({', '.join(EMBEDDING_SUFFIXES)})")


def _feature_tensor(path: str) -> np.ndarray | None:
    try:
        from .clam_h5 import read_feature_tensor

        return read_feature_tensor(path)
    except ImportError:  # no torch: only the pickle reading is left
        return None


def _keyed_tensor(tensor: np.ndarray, path: str, keys) -> RawEmbeddings:
    """A CLAM/TRIDENT ``.pt`` holds features only; its rows follow the coords of the ``.h5``
    of the same slide, which ``keys`` names."""
    if keys is None:
        raise PathvizError(
            f"{path}: a bare feature tensor has no patch coordinates; give the slide's "
            "CLAM/TRIDENT .h5 (or a key table) with --keys"
        )
    rows = read_table(keys)
    if len(rows) != len(tensor):
        raise PathvizError(
            f"{path}: {len(tensor)} feature rows but {len(rows)} coordinates in {keys}; "
            "they must describe the same patches"
        )
    return RawEmbeddings(rows.reset_index(drop=True), tensor, path)


def _as_float_matrix(frame: pd.DataFrame, path: str) -> np.ndarray:
    values = frame.apply(pd.to_numeric, errors="coerce")
    bad = values.isna().to_numpy() & frame.notna().to_numpy()
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise PathvizError(
            f"{path}: row {row}: feature {frame.columns[col]} is not a number "
            f"({frame.iat[row, col]!r})"
        )
    return values.to_numpy(dtype=np.float32)


def _read_array(path: str, keys: str | os.PathLike | None) -> RawEmbeddings:
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as exc:  # an object array would need pickle: refuse
        raise PathvizError(f"{path}: cannot read array without unpickling ({exc})") from exc
    except Exception as exc:
        raise PathvizError(f"{path}: not a readable .npy/.npz ({type(exc).__name__})") from exc
    rows = None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        names = list(loaded.files)
        name = next((n for n in ("embeddings", "features") if n in names), None)
        if name is None:
            raise PathvizError(f"{path}: .npz has no 'embeddings' or 'features' array ({names})")
        array, rows = _npz_arrays(loaded, name, path)
    else:
        array = loaded
    if array.ndim != 2:
        raise PathvizError(
            f"{path}: embeddings must be a 2-D (patches x features) array, found shape "
            f"{array.shape}"
        )
    if keys is not None:
        rows = read_table(keys)
    if rows is None:
        raise PathvizError(f"{path}: a bare array has no patch keys; give the key table (--keys)")
    if len(rows) != len(array):
        raise PathvizError(
            f"{path}: {len(array)} embedding rows but {len(rows)} key rows"
            + (f" in {keys}" if keys is not None else "")
        )
    return RawEmbeddings(rows.reset_index(drop=True), array.astype(np.float32), path)


def _npz_arrays(loaded, name: str, path: str) -> tuple[np.ndarray, pd.DataFrame | None]:
    """The features and the key columns of an .npz; its members load lazily, so an object
    array (it needs pickle) or a key of another length is found here."""
    arrays = {}
    for key in (name, "ID", "x", "y", "patch_size"):
        if key not in loaded.files:
            continue
        try:
            arrays[key] = loaded[key]
        except ValueError as exc:
            raise PathvizError(
                f"{path}: array {key!r} holds Python objects, which cannot be read without "
                "unpickling; store numbers and strings"
            ) from exc
    keys = {k: v for k, v in arrays.items() if k != name}
    lengths = {k: len(np.atleast_1d(v)) for k, v in keys.items()}
    if len(set(lengths.values())) > 1:
        found = ", ".join(f"{k}: {n}" for k, n in lengths.items())
        raise PathvizError(f"{path}: key arrays of different lengths ({found})")
    return arrays[name], (pd.DataFrame(keys) if keys else None)


def _read_pathflowai_pickle(path: str, trust_pickle: bool) -> RawEmbeddings:
    if not trust_pickle:
        raise PathvizError(
            f"{path}: is a pickle, which can run code when loaded; pass --trust-pickle "
            "(or confirm in the GUI) only if you trust its origin"
        )
    try:
        data = _load_trusted_pickle(path)
    except Exception as exc:
        raise PathvizError(f"{path}: cannot load ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict) or "embeddings" not in data:
        raise PathvizError(f"{path}: expected PathFlowAI's dict(embeddings=..., patch_info=...)")
    emb = data["embeddings"]
    if not isinstance(emb, pd.DataFrame):
        raise PathvizError(f"{path}: 'embeddings' is not a DataFrame")
    columns = feature_columns(emb.columns)
    if not columns:
        raise PathvizError(f"{path}: 'embeddings' has no integer-named feature columns")
    features = _as_float_matrix(emb[columns], path)
    info = data.get("patch_info")
    if isinstance(info, pd.DataFrame) and len(info) == len(emb):
        rows = info.reset_index(drop=True).copy()
    else:
        rows = _numeric_columns(pd.DataFrame([_parse_pathflowai_index(i) for i in emb.index]))
    if "ID" in emb.columns:  # the embeddings' own ID column is authoritative
        rows["ID"] = emb["ID"].astype(str).to_numpy()
    if "index" in rows.columns:
        rows = rows.drop(columns="index")
    return RawEmbeddings(rows, features, path)


def _load_trusted_pickle(path: str):
    """torch.save files (PathFlowAI's) through torch when it is there, plain pickles otherwise."""
    import pickle

    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except (RuntimeError, pickle.UnpicklingError):
            pass  # not a torch file: try it as a plain pickle
    with open(path, "rb") as f:
        return pickle.load(f)  # noqa: S301 - the user said the file is trusted


def _parse_pathflowai_index(label: object) -> dict:
    """PathFlowAI's row label: every patch_info column as "col:value", one per line (as text)."""
    out: dict = {}
    for line in str(label).splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key] = value
    return out


def _numeric_columns(rows: pd.DataFrame) -> pd.DataFrame:
    """Columns whose every value is a number become numeric; ``ID`` always stays text, so a
    slide named "001" keeps its name."""
    for column in rows.columns:
        if column == "ID":
            continue
        numbers = pd.to_numeric(rows[column], errors="coerce")
        if numbers.notna().all():
            whole = (numbers == numbers.round()).all() and column in ("x", "y", "patch_size")
            rows[column] = numbers.astype("int64") if whole else numbers
    return rows
