"""Patch tables in and out: CSV, Parquet and PathFlowAI's SQLite patch database.

PathFlowAI keeps one table per patch size in ``patch_info.db``, named by the size as text
(table ``"224"``), with columns index, ID, x, y, patch_size, annotation and one coverage column per
annotation; ``predictions.db`` has the same layout plus ``{i}_pred`` (output i's probability)
and ``y_pred``. Its readers index that layout
by position (``patch_info.iloc[:, 6:]`` are the annotation areas, ``iloc[:, 5:]`` once the index
column is dropped) and look each patch's ``annotation`` up as a column name, so a database we
write keeps exactly that order (see ``PATHFLOWAI_LEADING_COLUMNS``).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd

from ..classes import with_pathflowai_columns
from ..errors import PathvizError
from .atomic import atomic_file, make_parent

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq", ".db", ".sqlite", ".sqlite3")
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
# Read, never written: other tools' patch files (see io/clam_h5.py, io/wsinfer.py).
FIELD_TABLE_SUFFIXES = (".h5", ".hdf5", ".geojson")
# PathFlowAI's first six columns, in its order; every other column follows them.
PATHFLOWAI_LEADING_COLUMNS = ("index", "ID", "x", "y", "patch_size", "annotation")
# What PathFlowAI's preprocessing writes as the annotation of a patch it has no areas for.
NO_ANNOTATION = "NA"


def is_table_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(TABLE_SUFFIXES)


def sqlite_patch_sizes(path: str | os.PathLike) -> list[str]:
    """Names of the tables in a PathFlowAI-style database (one per patch size)."""
    path = str(path)
    _must_exist(path)
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
            names = [
                r[0]
                for r in con.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"
                )
            ]
    except sqlite3.DatabaseError as exc:
        raise PathvizError(f"{path}: not a readable SQLite database ({exc})") from exc
    return sorted(names, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))


def read_table(path: str | os.PathLike, patch_size: int | str | None = None) -> pd.DataFrame:
    """Reads a patch table as it is stored; validation is ``patches.PatchTable``'s job.

    For a SQLite database, ``patch_size`` chooses the table; it may be omitted when there is one.
    """
    path = str(path)
    _must_exist(path)
    lower = path.lower()
    try:
        if lower.endswith(FIELD_TABLE_SUFFIXES):
            return _read_field_table(path)
        if lower.endswith(SQLITE_SUFFIXES):
            return _read_sqlite(path, patch_size)
        if lower.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        if lower.endswith(".tsv"):
            return pd.read_csv(path, sep="\t")
        if lower.endswith(".csv"):
            from .wsinfer import wsinfer_to_patches  # WSInfer's minx, miny, width, height

            return wsinfer_to_patches(pd.read_csv(path), path)
    except PathvizError:
        raise
    except Exception as exc:
        raise PathvizError(f"{path}: cannot read table ({type(exc).__name__}: {exc})") from exc
    raise PathvizError(f"{path}: not a patch table format ({', '.join(TABLE_SUFFIXES)})")


def _read_field_table(path: str) -> pd.DataFrame:
    """CLAM/TRIDENT/WSInfer HDF5 coordinates, or a GeoJSON of tiles (WSInfer, QuPath)."""
    if path.lower().endswith((".h5", ".hdf5")):
        from .clam_h5 import read_coords_table

        return read_coords_table(path)
    from .wsinfer import read_tiles_geojson

    return read_tiles_geojson(path)


def _read_sqlite(path: str, patch_size: int | str | None) -> pd.DataFrame:
    tables = sqlite_patch_sizes(path)
    if not tables:
        raise PathvizError(f"{path}: database holds no tables")
    if patch_size in (None, "", 0):
        if len(tables) > 1:
            raise PathvizError(
                f"{path}: holds tables for several patch sizes ({', '.join(tables)}); "
                "choose one with --patch-size"
            )
        table = tables[0]
    else:
        table = str(patch_size)
        if table not in tables:
            raise PathvizError(
                f"{path}: no table for patch size {table} (tables: {', '.join(tables)})"
            )
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
        df = pd.read_sql_query(f'SELECT * FROM "{table}"', con)
    # PathFlowAI writes pandas' index as a column named "index": it is no patch attribute.
    if "index" in df.columns:
        df = df.drop(columns="index")
    if "patch_size" not in df.columns and table.isdigit():
        df["patch_size"] = int(table)
    return df


def write_table(df: pd.DataFrame, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Writes a patch table by the file's suffix (Parquet, CSV, or a SQLite table per patch size).

    A SQLite file gets PathFlowAI's layout, one table per patch size (see ``_pathflowai_frame``).
    Its other tables are kept; a table of the same patch size is an error unless ``overwrite``.
    """
    path = Path(path)
    lower = path.name.lower()
    if lower.endswith(SQLITE_SUFFIXES):
        _write_sqlite(df, path, overwrite)
        return path
    if not lower.endswith((".parquet", ".pq", ".csv", ".tsv")):
        raise PathvizError(f"{path}: unknown table suffix; use .parquet, .csv, .tsv or .db")
    # Written whole under a temporary name, then renamed: a failure keeps the previous file.
    with atomic_file(path) as tmp:
        try:
            if lower.endswith((".parquet", ".pq")):
                df.to_parquet(tmp, index=False)
            else:
                df.to_csv(tmp, index=False, sep="\t" if lower.endswith(".tsv") else ",")
        except (ValueError, TypeError, NotImplementedError, ImportError) as exc:  # pyarrow's too
            raise PathvizError(
                f"cannot write {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            ) from exc
    return path


def _pathflowai_frame(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The rows in PathFlowAI's column order: index (0..n-1), ID, x, y, patch_size, annotation,
    then every other column as given (annotation areas first, by the caller's order).

    A table without ``annotation`` gets PathFlowAI's own placeholder, "NA". Probabilities
    ``prob_<class>`` are also written as PathFlowAI's ``{i}_pred`` (output i), which its
    ``plot_predictions -ac 1_pred`` reads; ``y_pred`` stays the class name (``y_pred_index``
    is the integer PathFlowAI's own ``y_pred`` held).
    """
    missing = [c for c in ("ID", "x", "y", "patch_size") if c not in df.columns]
    if missing:
        raise PathvizError(
            f"{path}: a PathFlowAI patch database needs the columns ID, x, y, patch_size; "
            f"missing {', '.join(missing)}"
        )
    out = df.drop(columns=[c for c in ("index",) if c in df.columns]).reset_index(drop=True)
    # PathFlowAI slices its arrays with these: they must be stored as integers.
    for col in ("x", "y", "patch_size"):
        numbers = pd.to_numeric(out[col], errors="coerce")
        least = 1 if col == "patch_size" else 0
        bad = np.flatnonzero(numbers.isna() | (numbers != numbers.round()) | (numbers < least))
        if bad.size:
            row = int(bad[0])
            raise PathvizError(
                f"{path}: row {row}: {col} must be a whole number of pixels, "
                f"found {out[col].iloc[row]!r}"
            )
        out[col] = numbers.astype(np.int64)
    if "annotation" not in out.columns:
        out["annotation"] = NO_ANNOTATION
    # Predictions keep PathFlowAI's predictions.db names too: {i}_pred beside prob_<class>.
    out = with_pathflowai_columns(out)
    rest = [c for c in out.columns if c not in PATHFLOWAI_LEADING_COLUMNS]
    out = out[list(PATHFLOWAI_LEADING_COLUMNS[1:]) + rest]
    out.insert(0, "index", np.arange(len(out), dtype=np.int64))
    return out


def _write_sqlite(df: pd.DataFrame, path: Path, overwrite: bool) -> None:
    """One table per patch size, all written in one transaction: a failure leaves the file as
    it was, and a reader never sees a half-written table."""
    frame = _pathflowai_frame(df, path)
    sizes = frame["patch_size"]
    names = [str(int(s)) for s in sorted(sizes.unique())]
    make_parent(path)
    try:
        con = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise PathvizError(f"{path}: cannot open as a SQLite database ({exc})") from exc
    try:
        con.execute("BEGIN IMMEDIATE")
        existing = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        clashes = [n for n in names if n in existing]
        if clashes and not overwrite:
            raise PathvizError(
                f"{path}: already holds table {', '.join(repr(n) for n in clashes)} for that "
                "patch size; pass overwrite (--overwrite) to replace it, or write another file"
            )
        for name in names:
            rows = frame[sizes == int(name)]
            rows = rows.assign(index=np.arange(len(rows), dtype=np.int64))
            con.execute(f'DROP TABLE IF EXISTS "{name}"')
            con.execute(pd.io.sql.get_schema(rows, name))
            values = rows.astype(object).where(rows.notna(), None).to_numpy().tolist()
            marks = ", ".join("?" * rows.shape[1])
            con.executemany(f'INSERT INTO "{name}" VALUES ({marks})', values)
        con.execute("COMMIT")
    except sqlite3.Error as exc:
        raise PathvizError(f"{path}: cannot write the patch table ({exc})") from exc
    finally:
        if con.in_transaction:
            con.execute("ROLLBACK")
        con.close()


def _must_exist(path: str) -> None:
    if not os.path.exists(path):
        raise PathvizError(f"{path}: no such file or directory")
