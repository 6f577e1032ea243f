"""Patch tables in and out: CSV, Parquet and PathFlowAI's SQLite patch database.

PathFlowAI keeps one table per patch size in ``patch_info.db``, named by the size as text
(table ``"224"``), with columns index, ID, x, y, patch_size, annotation and one coverage column per
annotation; ``predictions.db`` has the same layout plus ``y_pred``.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pandas as pd

from ..errors import PathvizError

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq", ".db", ".sqlite", ".sqlite3")
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


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
        if lower.endswith(SQLITE_SUFFIXES):
            return _read_sqlite(path, patch_size)
        if lower.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        if lower.endswith(".tsv"):
            return pd.read_csv(path, sep="\t")
        if lower.endswith(".csv"):
            return pd.read_csv(path)
    except PathvizError:
        raise
    except Exception as exc:
        raise PathvizError(f"{path}: cannot read table ({type(exc).__name__}: {exc})") from exc
    raise PathvizError(f"{path}: not a patch table format ({', '.join(TABLE_SUFFIXES)})")


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


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Writes a patch table by the file's suffix (Parquet, CSV, or a SQLite table per patch size)."""
    path = Path(path)
    lower = path.name.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if lower.endswith((".parquet", ".pq")):
        df.to_parquet(path, index=False)
    elif lower.endswith(".csv"):
        df.to_csv(path, index=False)
    elif lower.endswith(".tsv"):
        df.to_csv(path, index=False, sep="\t")
    elif lower.endswith(SQLITE_SUFFIXES):
        with sqlite3.connect(path) as con:
            for size, rows in df.groupby("patch_size"):
                rows.reset_index(drop=True).to_sql(
                    str(int(size)), con, if_exists="replace", index=True
                )
    else:
        raise PathvizError(f"{path}: unknown table suffix; use .parquet, .csv, .tsv or .db")
    return path


def _must_exist(path: str) -> None:
    if not os.path.exists(path):
        raise PathvizError(f"{path}: no such file or directory")
