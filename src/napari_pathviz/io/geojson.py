"""QuPath GeoJSON in and out: annotations and tiles as shapely geometries.

QuPath's export (File > Export objects as GeoJSON) is a ``FeatureCollection`` (or, unticked, a
plain JSON list of features); each feature's ``properties`` holds ``objectType`` ("annotation",
"tile", "detection", ...), ``classification`` (``name`` and ``color`` [r, g, b]; QuPath 0.2
wrote ``colorRGB``, a packed integer) and ``measurements`` (a name -> value object; older
versions a list of {name, value}). Coordinates are level-0 pixels with the origin at the
top-left corner of pixel (0, 0): a patch at (x, y) of side P is the box [x, x+P] x [y, y+P].

Polygons that cross themselves are repaired with ``shapely.make_valid`` and reported as a
:class:`PathvizWarning` naming the feature; points and lines are skipped and reported. Rings are
written as RFC 7946 recommends (exteriors counter-clockwise, holes clockwise, i.e. a positive
and a negative shoelace area in the written coordinates); QuPath reads either orientation.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import PathvizError, PathvizWarning
from .atomic import atomic_file

GEOJSON_SUFFIXES = (".geojson",)
# Pixel corners of patch boxes are whole numbers: written as 1024, not 1024.0.
_WHOLE_NUMBER = re.compile(r"(?<![\d.])(-?\d+)\.0+(?![\d.eE])")
UNCLASSIFIED = "Unclassified"
# matplotlib's tab10, so that classes get the colours the scatter and the patches layer use.
PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


@dataclass
class GeoFeature:
    """One polygonal QuPath object: ``geometry`` a shapely Polygon or MultiPolygon."""

    geometry: object
    class_name: str = UNCLASSIFIED
    object_type: str = "annotation"
    color: tuple[int, int, int] | None = None
    measurements: dict = field(default_factory=dict)
    name: str | None = None
    index: int = -1  # position in the file it was read from


def is_geojson_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(GEOJSON_SUFFIXES)


def read_geojson(path: str | os.PathLike) -> list[GeoFeature]:
    """The polygonal features of a GeoJSON file, in file order."""
    path = str(path)
    items = _feature_list(_load_json(path), path)
    for index, item in enumerate(items):
        if not isinstance(item, dict) or item.get("type") != "Feature":
            raise PathvizError(f"{path}: feature {index} is not a GeoJSON Feature")
    geometries = _parse_geometries([item.get("geometry") for item in items], path)
    out, skipped = [], []
    for index, (item, geometry) in enumerate(zip(items, geometries, strict=True)):
        feature = _parse_feature(item, geometry, index, path)
        if feature is None:
            skipped.append(index)
        else:
            out.append(feature)
    if skipped:
        warnings.warn(
            f"{path}: skipped {len(skipped)} feature(s) without an area (points, lines or no "
            f"geometry; first: feature {skipped[0]})",
            PathvizWarning,
            stacklevel=2,
        )
    return out


def write_geojson(
    path: str | os.PathLike, features: list[GeoFeature], *, overwrite: bool = True
) -> Path:
    """Writes ``features`` as a QuPath-readable FeatureCollection (atomically)."""
    import shapely

    path = Path(path)
    if path.exists() and not overwrite:
        raise PathvizError(f"{path}: already exists; pass --overwrite to replace it")
    # GEOS writes all geometries in one call, and each feature is joined as text: per-feature
    # geometry objects and json.dump's Python encoder made this ten times slower.
    geometries = shapely.orient_polygons(np.array([f.geometry for f in features], dtype=object))
    geometries = shapely.to_geojson(geometries)  # oriented as RFC 7946 recommends (see above)
    parts = [_feature_text(f, g) for f, g in zip(features, geometries, strict=True)]
    text = '{"type": "FeatureCollection", "features": [' + ",\n".join(parts) + "]}\n"
    with atomic_file(path) as tmp, open(tmp, "w") as out:
        out.write(text)
    return path


def class_color(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


# GeoJSON nests a MultiPolygon's numbers 8 levels deep; a GeometryCollection adds a few. Deeper
# files are refused before parsing: Python's JSON parser recurses once per level.
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def _load_json(path: str):
    if not os.path.exists(path):
        raise PathvizError(f"{path}: no such file or directory")
    try:
        with open(path, "rb") as f:
            raw = f.read()
        depth = json_nesting_depth(raw)
        if depth > MAX_JSON_DEPTH:
            raise PathvizError(
                f"{path}: JSON nested {depth} levels deep (GeoJSON needs fewer than "
                f"{MAX_JSON_DEPTH}); not a GeoJSON file"
            )
        return json.loads(raw.decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise PathvizError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    except RecursionError:  # the depth check counts brackets; this is its backstop
        raise PathvizError(f"{path}: JSON nested too deeply; not a GeoJSON file") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise PathvizError(f"{path}: cannot read as JSON text ({exc})") from exc


def json_nesting_depth(raw: bytes, block: int = 1 << 23) -> int:
    """The deepest nesting of arrays and objects in JSON text (brackets inside strings do not
    count), counted without parsing, a block at a time."""
    bare = _JSON_STRING.sub(b'""', raw)
    deepest, level = 0, 0
    for start in range(0, len(bare), block):
        codes = np.frombuffer(bare, np.uint8, count=min(block, len(bare) - start), offset=start)
        steps = np.zeros(len(codes), np.int32)
        steps[(codes == ord("[")) | (codes == ord("{"))] = 1
        steps[(codes == ord("]")) | (codes == ord("}"))] = -1
        levels = np.cumsum(steps) + level
        if len(levels):
            deepest, level = max(deepest, int(levels.max())), int(levels[-1])
    return deepest


def _feature_list(data, path: str) -> list:
    if isinstance(data, list) and all(
        isinstance(i, dict) and i.get("type") == "Feature" for i in data
    ):
        return data  # QuPath's export with "Export as FeatureCollection" unticked
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection":
        found = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise PathvizError(
            f"{path}: not a GeoJSON FeatureCollection (found {found!r}); export the objects "
            "from QuPath with File > Export objects as GeoJSON"
        )
    features = data.get("features")
    if not isinstance(features, list):
        raise PathvizError(f"{path}: the FeatureCollection's 'features' is not a list")
    return features


def _parse_geometries(raw: list, path: str) -> list:
    """Shapely geometries (None for a null geometry), parsed by GEOS in one call: a tile file
    holds tens of thousands of them. A failure is then found feature by feature, to name it."""
    import shapely

    texts = np.empty(len(raw), dtype=object)
    for index, geometry in enumerate(raw):
        if geometry is not None and not isinstance(geometry, dict):
            raise PathvizError(f"{path}: feature {index}: 'geometry' is not an object")
        texts[index] = None if geometry is None else json.dumps(geometry)
    errors = (shapely.errors.GEOSException, ValueError, TypeError)
    try:
        return list(shapely.from_geojson(texts, on_invalid="raise"))
    except errors:
        pass
    for index, text in enumerate(texts):
        try:
            shapely.from_geojson(text, on_invalid="raise")
        except errors as exc:
            raise PathvizError(f"{path}: feature {index}: unreadable geometry ({exc})") from exc
    raise PathvizError(f"{path}: unreadable geometries")


def _parse_feature(item, geometry, index: int, path: str) -> GeoFeature | None:
    geometry = _polygonal(geometry, index, path)
    if geometry is None:
        return None
    props = item.get("properties") or {}
    if not isinstance(props, dict):
        raise PathvizError(f"{path}: feature {index}: 'properties' is not an object")
    class_name, color = _classification(props, index, path)
    name = props.get("name")
    return GeoFeature(
        geometry=geometry,
        class_name=class_name,
        object_type=str(props.get("objectType", "annotation")),
        color=color,
        measurements=_measurements(props.get("measurements"), index, path),
        name=str(name) if name is not None else None,
        index=index,
    )


def _polygonal(geom, index: int, path: str):
    """A valid Polygon/MultiPolygon, or None for a feature without area."""
    import shapely

    if geom is None:
        return None
    if geom.geom_type not in ("Polygon", "MultiPolygon"):
        return None
    coords = shapely.get_coordinates(geom)
    if not np.isfinite(coords).all():
        raise PathvizError(f"{path}: feature {index}: coordinates are not finite numbers")
    if not geom.is_valid:
        reason = shapely.is_valid_reason(geom)
        geom = _polygon_parts(shapely.make_valid(geom))
        warnings.warn(
            f"{path}: feature {index}: invalid polygon ({reason}) repaired with shapely.make_valid",
            PathvizWarning,
            stacklevel=4,
        )
    return None if geom is None or geom.is_empty else geom


def _polygon_parts(geom):
    """The polygons of what make_valid returns (it may add the lines of a collapsed ring)."""
    import shapely

    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else None


def _classification(props: dict, index: int, path: str) -> tuple[str, tuple | None]:
    klass = props.get("classification")
    if klass is None:
        return UNCLASSIFIED, None
    if isinstance(klass, str):
        return klass, None
    if not isinstance(klass, dict) or "name" not in klass:
        raise PathvizError(f"{path}: feature {index}: 'classification' has no name")
    color = klass.get("color", klass.get("colorRGB"))
    if isinstance(color, (list, tuple)) and len(color) >= 3:
        color = tuple(int(c) & 255 for c in color[:3])
    elif isinstance(color, int):  # QuPath 0.2: packed (A)RGB, possibly negative
        color = ((color >> 16) & 255, (color >> 8) & 255, color & 255)
    else:
        color = None
    return str(klass["name"]), color


def _measurements(raw, index: int, path: str) -> dict:
    if raw is None:
        return {}
    if isinstance(raw, list):  # QuPath before 0.4: [{"name": ..., "value": ...}, ...]
        try:
            raw = {m["name"]: m["value"] for m in raw}
        except (TypeError, KeyError) as exc:
            raise PathvizError(
                f"{path}: feature {index}: measurements are neither an object nor a list of "
                "{name, value}"
            ) from exc
    if not isinstance(raw, dict):
        raise PathvizError(f"{path}: feature {index}: 'measurements' is not an object")
    out = {}
    for key, value in raw.items():
        try:
            out[str(key)] = float(value) if value is not None else float("nan")
        except (TypeError, ValueError):
            raise PathvizError(
                f"{path}: feature {index}: measurement {key!r} is not a number ({value!r})"
            ) from None
    return out


def _feature_text(feature: GeoFeature, geometry_text: str) -> str:
    props: dict = {"objectType": feature.object_type}
    if feature.name is not None:
        props["name"] = feature.name
    if feature.class_name != UNCLASSIFIED:
        klass: dict = {"name": feature.class_name}
        if feature.color is not None:
            klass["color"] = [int(c) for c in feature.color]
        props["classification"] = klass
    # JSON holds no NaN: a measurement QuPath would show as missing is left out.
    props["measurements"] = {
        k: float(v) for k, v in feature.measurements.items() if np.isfinite(float(v))
    }
    if feature.object_type == "tile":
        props["isLocked"] = True  # as WSInfer writes tiles: not moved by a stray drag in QuPath
    geometry = _WHOLE_NUMBER.sub(r"\1", geometry_text)
    properties = json.dumps(props, allow_nan=False)
    return f'{{"type": "Feature", "geometry": {geometry}, "properties": {properties}}}'
