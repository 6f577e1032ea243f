"""GeoJSON nested too deeply is refused in one line, in the CLI and in napari's reader (issue 18,
item 10): Python's JSON parser recursed once per level into a RecursionError traceback."""

from __future__ import annotations

import hashlib
import json

from napari_pathviz.cli import main
from napari_pathviz.io.geojson import MAX_JSON_DEPTH, json_nesting_depth, read_geojson

PLUGIN = "napari-pathviz"


def _deep_geojson(path, depth: int = 100_000):
    """A FeatureCollection whose one polygon's coordinates are nested ``depth`` arrays deep."""
    coordinates = "[" * depth + "]" * depth
    path.write_text(
        '{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, '
        f'"geometry": {{"type": "Polygon", "coordinates": {coordinates}}}}}]}}'
    )
    return path


def test_the_cli_refuses_deep_json_in_one_line(tmp_path, capsys):
    from napari_pathviz._demo import ensure_demo_data

    patches = ensure_demo_data()["patches"]
    digest = hashlib.sha256(patches.read_bytes()).hexdigest()
    deep = _deep_geojson(tmp_path / "deep.geojson")
    out = tmp_path / "labelled.csv"
    code = main(["annotate", str(patches), "--geojson", str(deep), "-o", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2
    assert len(err) == 1 and "deep.geojson: JSON nested 100004 levels deep" in err[0], err
    assert not out.exists()
    assert hashlib.sha256(patches.read_bytes()).hexdigest() == digest


def test_napari_reports_deep_json_as_a_notification(make_napari_viewer, tmp_path, notifications):
    deep = _deep_geojson(tmp_path / "deep.geojson")
    viewer = make_napari_viewer()
    assert viewer.open(deep, plugin=PLUGIN) == []
    assert len(viewer.layers) == 0
    assert any("deep.geojson: JSON nested 100004 levels deep" in m for m in notifications)


def test_real_geojson_is_far_below_the_cap_and_brackets_in_strings_do_not_count(tmp_path):
    square = [[[0, 0], [64, 0], [64, 64], [0, 64], [0, 0]]]
    feature = {
        "type": "Feature",
        "geometry": {"type": "MultiPolygon", "coordinates": [square, square]},
        "properties": {"objectType": "annotation", "name": "[[[[{{{{" * 40},
    }
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    assert json_nesting_depth(path.read_bytes()) == 8 < MAX_JSON_DEPTH
    assert json_nesting_depth(path.read_bytes(), block=5) == 8  # across block boundaries
    (read,) = read_geojson(path)
    assert read.name.startswith("[[[[{{{{")
