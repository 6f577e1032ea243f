"""QuPath annotations and patches: label each patch by the annotations that cover it, and turn a
selection, a cluster or thresholded predictions into QuPath annotations or tiles.

Both directions work in QuPath's frame: level-0 pixels, a patch at (x, y) of side P being the
box [x, x+P] x [y, y+P]. Coverage is the fraction of that box inside the union of a class's
polygons (so two overlapping annotations of one class do not count twice), found with a shapely
STRtree over the patch boxes: only the patches near an annotation are intersected.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from .errors import PathvizError
from .io.geojson import GeoFeature, class_color
from .io.tables import NO_ANNOTATION
from .patches import KEY_COLUMNS, PatchTable, match_rows

COLUMN_PREFIX = "qupath_"
CLASS_COLUMN = "qupath_class"
_CONDITION = re.compile(r"^\s*([^<>=!\s]+)\s*(>=|<=|==|!=|>|<)\s*(.+?)\s*$")


def patch_boxes(df: pd.DataFrame):
    """One shapely box per patch row, in QuPath's corner-based level-0 frame."""
    import shapely

    x, y, p = (df[c].to_numpy(dtype=float) for c in ("x", "y", "patch_size"))
    return shapely.box(x, y, x + p, y + p)


def label_patches(
    table: PatchTable, annotations: list[GeoFeature], *, min_coverage: float = 0.5
) -> pd.DataFrame:
    """``table.df`` with a column ``qupath_<class>`` per annotation class (the fraction of each
    patch it covers, 0..1; named by :func:`coverage_columns`) and ``qupath_class``: the class
    covering the largest fraction of the patch when that fraction is at least
    ``min_coverage``, else "NA" (PathFlowAI's "none")."""
    import shapely

    if not 0.0 < min_coverage <= 1.0:
        raise PathvizError(f"--min-coverage must be in (0, 1], got {min_coverage}")
    polygons = [a for a in annotations if a.object_type != "tile"]
    if not polygons:
        raise PathvizError("the GeoJSON holds no annotations (only tiles, or nothing)")
    df = table.df.copy()
    boxes = patch_boxes(df)
    areas = shapely.area(boxes)
    tree = shapely.STRtree(boxes)
    classes = sorted({a.class_name for a in polygons})
    coverage = np.zeros((len(df), len(classes)))
    for j, name in enumerate(classes):
        region = shapely.union_all([a.geometry for a in polygons if a.class_name == name])
        shapely.prepare(region)
        # Patches wholly inside are covered fully; only those on the outline are intersected,
        # the costly part with an outline of thousands of vertices.
        inside = tree.query(region, predicate="contains")
        coverage[inside, j] = 1.0
        edge = np.setdiff1d(tree.query(region, predicate="intersects"), inside)
        if edge.size:
            shared = shapely.area(shapely.intersection(boxes[edge], region))
            coverage[edge, j] = np.clip(shared / areas[edge], 0.0, 1.0)
    columns = coverage_columns(classes)
    for j, name in enumerate(classes):
        df[columns[name]] = coverage[:, j]
    best = coverage.argmax(axis=1)
    covered = coverage[np.arange(len(df)), best] >= min_coverage - 1e-12
    df[CLASS_COLUMN] = np.where(covered, np.asarray(classes, dtype=object)[best], NO_ANNOTATION)
    return df


def coverage_columns(classes: list[str]) -> dict[str, str]:
    """Class name -> its coverage column, ``qupath_<class>``. A class whose column would be the
    class column (a class named "class") or another class's gets ``_coverage`` appended (then
    a number), so that no class's coverage is lost; a warning names the column it got."""
    import warnings

    from .errors import PathvizWarning

    taken, columns = {CLASS_COLUMN}, {}
    for name in classes:
        column = base = COLUMN_PREFIX + name
        if column in taken:
            column = base = f"{column}_coverage"
            k = 2
            while column in taken:
                column, k = f"{base}_{k}", k + 1
            warnings.warn(
                f"QuPath class {name!r}: its coverage is in the column {column!r} "
                f"({COLUMN_PREFIX + name!r} is taken)",
                PathvizWarning,
                stacklevel=3,
            )
        taken.add(column)
        columns[name] = column
    return columns


def select_rows(df: pd.DataFrame, *, rows: pd.DataFrame | None = None, where: str | None = None):
    """A boolean mask of the patches to export: those listed in ``rows`` (a table of patch keys,
    e.g. a selection saved from the scatter) or those meeting ``where`` ("prob_tumor>0.5")."""
    if rows is not None:
        rows = rows.copy()
        for key in ("ID", "patch_size"):  # a selection of one slide's patches may omit them
            if key not in rows.columns and df[key].nunique() == 1:
                rows[key] = df[key].iloc[0]
        rows = PatchTable.from_frame(rows, "--rows").df
        found = match_rows(rows, df)
        missing = int((found < 0).sum())
        if missing == len(rows):
            raise PathvizError("--rows: none of its patches is in the table (compare ID, x, y)")
        mask = np.zeros(len(df), dtype=bool)
        mask[found[found >= 0]] = True
        return mask
    if where is not None:
        return _condition_mask(df, where)
    return np.ones(len(df), dtype=bool)


def _condition_mask(df: pd.DataFrame, where: str) -> np.ndarray:
    """COLUMN OP VALUE, parsed here rather than handed to pandas' query (which evaluates code)."""
    match = _CONDITION.match(where)
    if not match:
        raise PathvizError(f"--where {where!r}: expected COLUMN OP VALUE, e.g. prob_tumor>0.5")
    column, op, text = match.groups()
    if column not in df.columns:
        raise PathvizError(
            f"--where: no column {column!r} (columns: {', '.join(map(str, df.columns))})"
        )
    values = df[column]
    try:
        value = float(text)
        values = pd.to_numeric(values, errors="coerce")
    except ValueError:
        value = text.strip("'\"")
        values = values.astype(str)
        if op not in ("==", "!="):
            raise PathvizError(f"--where {where!r}: {op} needs a number") from None
    ops = {
        ">": np.greater,
        ">=": np.greater_equal,
        "<": np.less,
        "<=": np.less_equal,
        "==": np.equal,
        "!=": np.not_equal,
    }
    return np.asarray(ops[op](values.to_numpy(), value), dtype=bool)


def default_class_name(where: str | None) -> str:
    """``prob_tumor>0.5`` exports class "tumor"; any other condition is named by itself."""
    if where:
        match = _CONDITION.match(where)
        if match and match.group(1).startswith("prob_"):
            return match.group(1)[len("prob_") :]
        return where.strip()
    return "selection"


def patch_features(
    df: pd.DataFrame,
    mask: np.ndarray | None = None,
    *,
    class_name: str = "selection",
    column: str | None = None,
    object_type: str = "annotation",
) -> list[GeoFeature]:
    """The patches ``mask`` keeps as QuPath objects: one tile per patch (its numeric columns as
    measurements), or per class one annotation, the union of its patches' boxes (measurements:
    the number of patches and each numeric column's mean). With ``column`` every value of that
    column (a cluster, y_pred) is a class; otherwise all kept patches are ``class_name``."""
    if object_type not in ("annotation", "tile"):
        raise PathvizError(f"--as must be annotation or tile, got {object_type!r}")
    mask = np.ones(len(df), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if not mask.any():
        raise PathvizError("the selection is empty: no patch to export")
    kept = df[mask].reset_index(drop=True)
    if column is not None:
        if column not in kept.columns:
            raise PathvizError(
                f"--column: no column {column!r} (columns: {', '.join(map(str, df.columns))})"
            )
        labels = kept[column].astype(str).to_numpy()
    else:
        labels = np.full(len(kept), str(class_name), dtype=object)
    classes = sorted(set(labels.tolist()))
    colors = {name: class_color(i) for i, name in enumerate(classes)}
    if object_type == "tile":
        return _tiles(kept, labels, colors)
    return [_annotation(kept[labels == name], name, colors[name]) for name in classes]


def _numeric_columns(df: pd.DataFrame) -> list[str]:
    return [
        c
        for c in df.columns
        if c not in KEY_COLUMNS
        and pd.api.types.is_numeric_dtype(df[c])
        and not pd.api.types.is_bool_dtype(df[c])
    ]


def _tiles(kept: pd.DataFrame, labels, colors) -> list[GeoFeature]:
    boxes = patch_boxes(kept)
    numeric = _numeric_columns(kept)
    values = kept[numeric].to_numpy(dtype=float) if numeric else np.zeros((len(kept), 0))
    ids = kept["ID"].astype(str).to_numpy()
    return [
        GeoFeature(
            geometry=boxes[i],
            class_name=str(labels[i]),
            object_type="tile",
            color=colors[labels[i]],
            measurements=dict(zip(numeric, values[i].tolist(), strict=True)),
            name=ids[i],
            index=i,
        )
        for i in range(len(kept))
    ]


def _annotation(rows: pd.DataFrame, name: str, color) -> GeoFeature:
    import shapely

    boxes = patch_boxes(rows.drop_duplicates(subset=["x", "y", "patch_size"]))
    # Patches of one grid only share edges: GEOS's coverage union is then exact and ~20x faster.
    union = shapely.coverage_union_all if _one_grid(rows) else shapely.union_all
    region = union(boxes)
    numeric = _numeric_columns(rows)
    measurements = {"Num patches": float(len(rows))}
    measurements.update({f"Mean {c}": float(rows[c].mean()) for c in numeric})
    return GeoFeature(geometry=region, class_name=name, color=color, measurements=measurements)


def _one_grid(rows: pd.DataFrame) -> bool:
    """Whether the patches are squares of one size on one grid of that pitch: no two overlap."""
    sizes = rows["patch_size"].unique()
    if len(sizes) != 1:
        return False
    size = int(sizes[0])
    return all(rows[c].mod(size).nunique() == 1 for c in ("x", "y"))
