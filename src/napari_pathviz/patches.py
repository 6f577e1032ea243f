"""PatchTable: validated patch locations and attributes, and tissue-grid generation.

A patch is keyed by (ID, x, y, patch_size): slide id and the level-0 pixel of its top-left corner,
x the column and y the row. PathFlowAI's x indexes the first axis of its (x, y, C) zarr, which is
the column once the slide is shown (y, x, C), so its tables need no swapping.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import PathvizError
from .io.tables import read_table

KEY_COLUMNS = ("ID", "x", "y", "patch_size")
_LARGEST_COORDINATE = 2**53


@dataclass
class PatchTable:
    """Patches of one or more slides; ``df`` always has the key columns with integer x, y, size."""

    df: pd.DataFrame
    source: str = "<table>"

    def __len__(self) -> int:
        return len(self.df)

    @classmethod
    def from_frame(
        cls,
        df: pd.DataFrame,
        source: str = "<table>",
        *,
        patch_size: int | None = None,
        slide_id: str | None = None,
    ) -> PatchTable:
        """Validates a raw table; errors name the source and the first row at fault."""
        df = df.reset_index(drop=True).copy()
        missing = [c for c in ("x", "y") if c not in df.columns]
        if missing:
            raise PathvizError(
                f"{source}: missing column(s) {', '.join(missing)} "
                f"(columns: {', '.join(map(str, df.columns[:12]))})"
            )
        for col in ("x", "y"):
            df[col] = _whole_non_negative(df[col], source, col)
        if "patch_size" in df.columns:
            df["patch_size"] = _whole_non_negative(df["patch_size"], source, "patch_size")
            if patch_size:
                df = df[df["patch_size"] == int(patch_size)].reset_index(drop=True)
                if df.empty:
                    raise PathvizError(f"{source}: no rows with patch_size {patch_size}")
        elif patch_size:
            df["patch_size"] = int(patch_size)
        else:
            raise PathvizError(
                f"{source}: no patch_size column; give the patch size (--patch-size)"
            )
        bad = np.flatnonzero(df["patch_size"].to_numpy() <= 0)
        if bad.size:
            raise PathvizError(f"{source}: row {bad[0]}: patch_size must be positive")
        if "ID" in df.columns:
            df["ID"] = df["ID"].astype(str)
            if slide_id:
                kept = df[df["ID"] == str(slide_id)].reset_index(drop=True)
                if kept.empty:
                    raise PathvizError(
                        f"{source}: no patches for slide ID {slide_id!r} "
                        f"(IDs present: {_some_ids(df['ID'])})"
                    )
                df = kept
        else:
            df.insert(0, "ID", str(slide_id) if slide_id else _stem(source))
        return cls(df, source)

    @property
    def patch_sizes(self) -> np.ndarray:
        return self.df["patch_size"].to_numpy()

    def centers_yx(self) -> np.ndarray:
        """World (y, x) of each patch centre. Pixel (0, 0)'s centre is at (0, 0), so a patch at
        (y0, x0) of size P spans [y0 - 0.5, y0 + P - 0.5] and is centred on y0 + (P - 1) / 2."""
        half = (self.patch_sizes - 1) / 2.0
        return np.stack([self.df["y"].to_numpy() + half, self.df["x"].to_numpy() + half], axis=1)

    def check_inside(self, height: int, width: int) -> None:
        """Raises naming the first patch that does not lie wholly inside a height x width slide."""
        x, y, p = (self.df[c].to_numpy() for c in ("x", "y", "patch_size"))
        bad = np.flatnonzero((x + p > width) | (y + p > height))
        if bad.size:
            i = bad[0]
            raise PathvizError(
                f"{self.source}: row {i}: patch x={x[i]}, y={y[i]}, size {p[i]} lies outside the "
                f"slide ({width} wide x {height} high); {bad.size} such rows"
            )


def load_patches(
    path: str | os.PathLike,
    *,
    patch_size: int | None = None,
    slide_id: str | None = None,
    slide_shape: tuple[int, int] | None = None,
) -> PatchTable:
    """Reads and validates a patch table (CSV, Parquet, PathFlowAI SQLite).

    ``slide_id`` keeps one slide's rows when the table has an ``ID`` column; ``slide_shape``
    (height, width) checks that every patch lies inside the slide.
    """
    df = read_table(path, patch_size)
    table = PatchTable.from_frame(df, str(path), patch_size=patch_size, slide_id=slide_id)
    if slide_shape is not None:
        table.check_inside(*slide_shape)
    return table


def patches_for_slide(
    df: pd.DataFrame,
    source: str,
    slide,
    *,
    patch_size: int | None = None,
    slide_id: str | None = None,
) -> PatchTable:
    """Validates a raw table for one open slide and keeps that slide's rows.

    The rows kept are those whose ``ID`` is ``slide_id`` when given (an explicit mapping, e.g.
    when the table calls the slide by another name), else the slide's own ID (its file name
    without suffixes). A table with IDs of which none matches is refused naming the IDs found
    and the one expected: using another slide's rows would label results with the wrong IDs.
    A table without an ``ID`` column is taken to be this slide's and labelled with its ID.
    Every patch must lie inside the slide.
    """
    if df.empty:  # not "the table's IDs are ;": there are none
        raise PathvizError(f"{source}: the table is empty (no patch rows)")
    if slide_id is None:
        if "ID" in df.columns and not (df["ID"].astype(str) == slide.slide_id).any():
            raise PathvizError(
                f"{source}: no rows for slide {slide.slide_id!r} ({slide.path}): the table's "
                f"IDs are {_some_ids(df['ID'])}; say which is this slide's with --slide-id "
                "(GUI: Slide ID)"
            )
        slide_id = slide.slide_id
    table = PatchTable.from_frame(df, source, patch_size=patch_size, slide_id=slide_id)
    table.check_inside(slide.height, slide.width)
    return table


def _some_ids(ids: pd.Series, limit: int = 5) -> str:
    """A few distinct IDs of a column, quoted, and how many more there are."""
    unique = sorted(ids.astype(str).unique())
    shown = ", ".join(repr(i) for i in unique[:limit])
    more = len(unique) - limit
    return shown + (f" and {more} more" if more > 0 else "")


def describe_patches(keys: pd.DataFrame, rows, limit: int = 3) -> str:
    """The patches at positions ``rows`` of ``keys`` as "ID x=.. y=..", the first few of them."""
    rows = np.asarray(rows)
    shown = []
    for r in rows[:limit]:
        row = keys.iloc[int(r)]
        where = f"x={row['x']} y={row['y']}" if "x" in keys and "y" in keys else f"row {r}"
        shown.append(f"{row['ID']} {where}" if "ID" in keys else where)
    more = len(rows) - limit
    return "; ".join(shown) + (f" and {more} more" if more > 0 else "")


def raise_on_non_finite(values: np.ndarray, keys: pd.DataFrame | None, what: str) -> None:
    """Raises naming the patches (rows of ``values``, keyed by ``keys``) whose values hold NaN
    or infinity: a model that gives them would otherwise leave NaN results that look stored."""
    values = np.asarray(values).reshape(len(values), -1)
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if not bad.size:
        return
    named = (
        describe_patches(keys, bad)
        if keys is not None
        else ", ".join(map(str, bad[:3])) + (" ..." if bad.size > 3 else "")
    )
    raise PathvizError(
        f"the model's {what} is NaN or infinite for {bad.size} of {len(values)} patches "
        f"({named}); check the model and its inputs"
    )


def match_rows(left: pd.DataFrame, right: pd.DataFrame) -> np.ndarray:
    """For each row of ``left``, the position of the row of ``right`` with the same patch key
    (ID, x, y, patch_size), or -1: how a scatter point finds its square on the slide."""
    key = list(KEY_COLUMNS)
    positions = pd.Series(
        np.arange(len(right)),
        index=pd.MultiIndex.from_frame(
            right[key].astype({"ID": str, "x": np.int64, "y": np.int64, "patch_size": np.int64})
        ),
    )
    positions = positions[~positions.index.duplicated(keep="first")]
    wanted = pd.MultiIndex.from_frame(
        left[key].astype({"ID": str, "x": np.int64, "y": np.int64, "patch_size": np.int64})
    )
    return positions.reindex(wanted).fillna(-1).to_numpy(dtype=np.int64)


def _whole_non_negative(values: pd.Series, source: str, col: str) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce")
    bad = np.flatnonzero(numbers.isna().to_numpy())
    if bad.size:
        raise PathvizError(
            f"{source}: row {bad[0]}: {col} is not a number ({values.iloc[bad[0]]!r})"
        )
    arr = numbers.to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(arr) | (arr < 0))
    if bad.size:
        raise PathvizError(
            f"{source}: row {bad[0]}: {col} must be a non-negative pixel "
            f"coordinate, found {arr[bad[0]]:g}"
        )
    bad = np.flatnonzero(arr != np.round(arr))
    if bad.size:
        raise PathvizError(
            f"{source}: row {bad[0]}: {col} must be a whole pixel, found {arr[bad[0]]:g}"
        )
    # Past 2**53 a float no longer holds every whole number, and past 2**63 the int64 cast
    # wraps to a negative coordinate that would pass the inside-the-slide check.
    bad = np.flatnonzero(arr > _LARGEST_COORDINATE)
    if bad.size:
        raise PathvizError(
            f"{source}: row {bad[0]}: {col} {arr[bad[0]]:.0f} is too large for a pixel "
            f"coordinate (at most {_LARGEST_COORDINATE})"
        )
    return pd.Series(arr.astype(np.int64), index=values.index)


def _stem(source: str) -> str:
    from .slide import slide_id_from_path

    return slide_id_from_path(source)
