"""QuPath GeoJSON is written with the ring orientation RFC 7946 recommends (section 3.1.6):
exterior rings counter-clockwise, holes clockwise, checked by a shoelace area computed here on
the written numbers; reading the file back gives the same geometry."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import shapely

from napari_pathviz.cli import main
from napari_pathviz.io.geojson import GeoFeature, read_geojson, write_geojson


def _shoelace(ring: list) -> float:
    """Signed area of a closed ring as written: positive when counter-clockwise (x right,
    y up, as RFC 7946 reads coordinates)."""
    xy = np.asarray(ring, dtype=float)
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


def _polygons(geometry: dict) -> list:
    """The ring lists of a written Polygon or MultiPolygon."""
    if geometry["type"] == "Polygon":
        return [geometry["coordinates"]]
    assert geometry["type"] == "MultiPolygon"
    return geometry["coordinates"]


def _assert_rfc7946_rings(path) -> int:
    """Every exterior counter-clockwise, every hole clockwise; returns the number of holes."""
    holes = 0
    for feature in json.loads(path.read_text())["features"]:
        for rings in _polygons(feature["geometry"]):
            assert _shoelace(rings[0]) > 0, rings[0]
            for hole in rings[1:]:
                assert _shoelace(hole) < 0, hole
                holes += 1
    return holes


def _clockwise_square_with_hole(x0: float, size: float) -> shapely.Polygon:
    """A square with a square hole, exterior clockwise and hole counter-clockwise: the
    orientation RFC 7946 advises against."""
    x1, q = x0 + size, size / 4
    outer = [(x0, 0), (x0, size), (x1, size), (x1, 0)]
    inner = [(x0 + q, q), (x1 - q, q), (x1 - q, size - q), (x0 + q, size - q)]
    return shapely.Polygon(outer, [inner])


def test_written_rings_are_counter_clockwise_with_clockwise_holes(tmp_path):
    single = _clockwise_square_with_hole(0, 100)
    multi = shapely.MultiPolygon(
        [_clockwise_square_with_hole(200, 80), shapely.box(400, 0, 450, 50, ccw=False)]
    )
    # The inputs are wound the other way round: the writer has something to turn.
    assert _shoelace(list(single.exterior.coords)) < 0
    assert _shoelace(list(single.interiors[0].coords)) > 0
    features = [
        GeoFeature(single, class_name="tumor", color=(200, 0, 0)),
        GeoFeature(multi, class_name="stroma"),
    ]
    out = write_geojson(tmp_path / "rings.geojson", features)
    assert _assert_rfc7946_rings(out) == 2
    back = read_geojson(out)
    assert [f.class_name for f in back] == ["tumor", "stroma"]
    for written, read in zip(features, back, strict=True):
        assert read.geometry.geom_type == written.geometry.geom_type
        assert read.geometry.equals(written.geometry)  # the same point set, holes included
        assert read.geometry.area == written.geometry.area


def test_cli_export_of_a_ring_of_patches_writes_rfc7946_rings(tmp_path):
    """A 3 x 3 block of patches without its centre (and a patch apart) unites into a square
    with a hole and a square: exported by pathviz export-geojson, read back unchanged."""
    xs, ys = np.meshgrid(np.arange(3) * 64, np.arange(3) * 64)
    grid = pd.DataFrame({"ID": "s1", "x": xs.ravel(), "y": ys.ravel(), "patch_size": 64})
    grid = pd.concat([grid[(grid.x != 64) | (grid.y != 64)], grid.iloc[[0]].assign(x=512)])
    grid.to_csv(tmp_path / "s1.csv", index=False)
    out = tmp_path / "ring.geojson"
    assert main(["export-geojson", str(tmp_path / "s1.csv"), "-o", str(out)]) == 0
    assert _assert_rfc7946_rings(out) == 1
    (feature,) = read_geojson(out)
    expected = shapely.union_all(
        [shapely.box(x, y, x + 64, y + 64) for x, y in zip(grid.x, grid.y, strict=True)]
    )
    assert feature.geometry.equals(expected)
    assert feature.geometry.area == 9 * 64 * 64
