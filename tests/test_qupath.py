"""QuPath GeoJSON: export patches as annotations or tiles, import annotations, label patches by
their overlap, the round trip, the napari reader and the layer actions."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import shapely

from napari_pathviz.annotations import label_patches, patch_boxes, patch_features
from napari_pathviz.cli import main
from napari_pathviz.errors import PathvizError, PathvizWarning
from napari_pathviz.io.geojson import read_geojson, write_geojson
from napari_pathviz.patches import PatchTable, load_patches

PLUGIN = "napari-pathviz"


@pytest.fixture
def grid() -> pd.DataFrame:
    """An 8 x 6 grid of 64-pixel patches; the right half is "tumour", the lower half cluster 1."""
    xs, ys = np.meshgrid(np.arange(8) * 64, np.arange(6) * 64)
    df = pd.DataFrame({"ID": "s1", "x": xs.ravel(), "y": ys.ravel(), "patch_size": 64})
    df["prob_tumor"] = np.where(df["x"] >= 256, 0.9, 0.1)
    df["cluster"] = np.where(df["y"] >= 192, "c1", "c0")
    return df


def _feature(coords, name=None, kind="Polygon", object_type="annotation", **props):
    properties = {"objectType": object_type, **props}
    if name is not None:
        properties["classification"] = {"name": name, "color": [200, 0, 0]}
    return {
        "type": "Feature",
        "id": "0b1c",
        "geometry": {"type": kind, "coordinates": coords},
        "properties": properties,
    }


def _write(path, features, top="FeatureCollection"):
    path.write_text(json.dumps({"type": top, "features": features}))
    return path


def test_round_trip_keeps_polygons_and_classes(tmp_path, grid):
    exported = patch_features(grid, column="cluster")
    write_geojson(tmp_path / "clusters.geojson", exported)
    back = read_geojson(tmp_path / "clusters.geojson")
    assert [f.class_name for f in back] == ["c0", "c1"]
    for name, feature in zip(("c0", "c1"), back, strict=True):
        expected = shapely.union_all(patch_boxes(grid[grid["cluster"] == name]))
        assert feature.geometry.equals(expected)
        assert feature.geometry.area == 8 * 3 * 64 * 64
        assert feature.object_type == "annotation"
        assert feature.measurements["Num patches"] == 24
    # Annotations read back label every patch with its own cluster, fully covered.
    labelled = label_patches(PatchTable(grid), back)
    assert (labelled["qupath_class"] == grid["cluster"]).all()
    assert set(labelled["qupath_c0"]) == {0.0, 1.0}


def test_tiles_round_trip_as_a_patch_table(tmp_path, grid):
    keep = (grid["prob_tumor"] > 0.5).to_numpy()
    tiles = patch_features(grid, keep, class_name="tumor", object_type="tile")
    write_geojson(tmp_path / "tiles.geojson", tiles)
    raw = json.loads((tmp_path / "tiles.geojson").read_text())
    props = raw["features"][0]["properties"]
    assert props["objectType"] == "tile" and props["classification"]["name"] == "tumor"
    assert props["measurements"] == {"prob_tumor": 0.9}  # numeric columns; keys are geometry
    back = load_patches(tmp_path / "tiles.geojson").df
    expected = grid[keep].reset_index(drop=True)
    assert back[["x", "y", "patch_size"]].to_numpy().tolist() == (
        expected[["x", "y", "patch_size"]].to_numpy().tolist()
    )
    assert set(back["ID"]) == {"s1"} and set(back["qupath_class"]) == {"tumor"}


def test_coverage_fractions_are_the_overlapping_areas(tmp_path):
    table = PatchTable.from_frame(
        pd.DataFrame({"x": [0, 64, 128], "y": [0, 0, 0], "patch_size": 64}), "t"
    )
    # Stroma: a box over the left half of patch 0 and a triangle over half of patch 1; a second,
    # overlapping stroma box must not count twice. Tumour: all of patch 2 and a quarter of 1.
    features = [
        _feature([[[0, 0], [32, 0], [32, 64], [0, 64], [0, 0]]], "Stroma"),
        _feature([[[0, 0], [16, 0], [16, 64], [0, 64], [0, 0]]], "Stroma"),
        _feature([[[64, 0], [128, 0], [64, 64], [64, 0]]], "Stroma"),
        _feature([[[[96, 32], [192, 32], [192, 64], [96, 64], [96, 32]]]], "Tumor", "MultiPolygon"),
        _feature([[[128, 0], [192, 0], [192, 40], [128, 40], [128, 0]]], "Tumor"),
    ]
    path = _write(tmp_path / "qupath.geojson", features)
    labelled = label_patches(table, read_geojson(path), min_coverage=0.5)
    np.testing.assert_allclose(labelled["qupath_Stroma"], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(labelled["qupath_Tumor"], [0.0, 0.25, 1.0])
    assert labelled["qupath_class"].tolist() == ["Stroma", "Stroma", "Tumor"]
    strict = label_patches(table, read_geojson(path), min_coverage=0.75)
    assert strict["qupath_class"].tolist() == ["NA", "NA", "Tumor"]


def test_a_class_named_like_a_column_keeps_its_coverage(tmp_path, capsys):
    """A QuPath class called "class" had its coverage column qupath_class overwritten by the
    label column of the same name. Each class keeps its coverage, in a column a warning names."""
    table = pd.DataFrame({"ID": "s", "x": [0, 64, 128], "y": 0, "patch_size": 64})
    table.to_csv(tmp_path / "t.csv", index=False)
    features = [
        _feature([[[0, 0], [48, 0], [48, 64], [0, 64], [0, 0]]], "class"),  # 3/4 of patch 0
        _feature([[[64, 0], [80, 0], [80, 64], [64, 64], [64, 0]]], "class_coverage"),  # 1/4
        _feature([[[128, 0], [192, 0], [192, 64], [128, 64], [128, 0]]], "Tumor"),
    ]
    geojson = _write(tmp_path / "q.geojson", features)
    out = tmp_path / "labelled.csv"
    argv = ["annotate", str(tmp_path / "t.csv"), "--geojson", str(geojson), "-o", str(out)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    labelled = pd.read_csv(out, keep_default_na=False)
    assert labelled["qupath_class"].tolist() == ["class", "NA", "Tumor"]
    np.testing.assert_allclose(labelled["qupath_class_coverage"], [0.75, 0.0, 0.0])
    np.testing.assert_allclose(labelled["qupath_class_coverage_coverage"], [0.0, 0.25, 0.0])
    np.testing.assert_allclose(labelled["qupath_Tumor"], [0.0, 0.0, 1.0])
    assert "'qupath_class_coverage' ('qupath_class' is taken)" in err
    # Labelling the labelled table again replaces the same columns: none is added.
    again = tmp_path / "again.csv"
    assert main([*argv[:1], str(out), *argv[2:5], str(again)]) == 0
    assert list(pd.read_csv(again).columns) == list(labelled.columns)


def test_old_qupath_measurements_and_packed_colours(tmp_path):
    feature = _feature([[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]])
    feature["properties"]["classification"] = {"name": "Necrosis", "colorRGB": -16711936}
    feature["properties"]["measurements"] = [{"name": "Area", "value": 100}]
    (tmp_path / "old.geojson").write_text(json.dumps([feature]))  # a plain list: QuPath 0.2
    (read,) = read_geojson(tmp_path / "old.geojson")
    assert read.class_name == "Necrosis" and read.color == (0, 255, 0)
    assert read.measurements == {"Area": 100.0}


@pytest.mark.parametrize(
    ("content", "found"),
    [
        ({"type": "Feature", "geometry": None, "properties": {}}, "Feature"),
        ({"type": "Polygon", "coordinates": []}, "Polygon"),
        ([1, 2, 3], "list"),
    ],
)
def test_not_a_feature_collection_is_refused_naming_the_file(tmp_path, content, found):
    (tmp_path / "bad.geojson").write_text(json.dumps(content))
    with pytest.raises(
        PathvizError, match=rf"bad\.geojson: not a GeoJSON FeatureCollection.*{found}"
    ):
        read_geojson(tmp_path / "bad.geojson")


def test_broken_json_is_one_line(tmp_path):
    (tmp_path / "cut.geojson").write_text('{"type": "FeatureCollection", "features": [')
    with pytest.raises(PathvizError, match=r"cut\.geojson: not valid JSON \(line 1"):
        read_geojson(tmp_path / "cut.geojson")


def test_self_intersecting_polygon_is_repaired_and_reported(tmp_path):
    square = [[[200, 200], [210, 200], [210, 210], [200, 210], [200, 200]]]
    bowtie = [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]  # two triangles of area 25
    path = _write(tmp_path / "bowtie.geojson", [_feature(square, "A"), _feature(bowtie, "B")])
    with pytest.warns(PathvizWarning, match=r"bowtie\.geojson: feature 1: invalid polygon"):
        features = read_geojson(path)
    assert features[1].geometry.is_valid
    assert features[1].geometry.area == pytest.approx(50.0)


def test_cli_annotate_and_export(tmp_path, grid, capsys):
    grid.to_csv(tmp_path / "s1.csv", index=False)
    table = str(tmp_path / "s1.csv")
    out = tmp_path / "tumor.geojson"
    assert main(["export-geojson", table, "-o", str(out), "--where", "prob_tumor>0.5"]) == 0
    (feature,) = read_geojson(out)
    assert feature.class_name == "tumor" and feature.geometry.area == 24 * 64 * 64
    assert main(["annotate", table, "--geojson", str(out), "-o", str(tmp_path / "l.parquet")]) == 0
    labelled = pd.read_parquet(tmp_path / "l.parquet")
    assert (labelled["qupath_class"] == np.where(grid["prob_tumor"] > 0.5, "tumor", "NA")).all()
    # A selection saved from the scatter: two patches, keys only.
    grid.iloc[[0, 9]][["x", "y"]].to_csv(tmp_path / "sel.csv", index=False)
    sel = tmp_path / "sel.geojson"
    args = ["export-geojson", table, "-o", str(sel), "--rows", str(tmp_path / "sel.csv")]
    assert main([*args, "--as", "tile"]) == 0
    assert [f.geometry.bounds for f in read_geojson(sel)] == [(0, 0, 64, 64), (64, 64, 128, 128)]
    capsys.readouterr()
    assert (
        main(["export-geojson", table, "-o", str(tmp_path / "x.geojson"), "--where", "nope>1"]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--where: no column 'nope'" in err[0]
    assert main(["export-geojson", table, "-o", str(sel), "--column", "cluster"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_napari_reads_annotations_as_shapes_and_labels_patches(make_napari_viewer, tmp_path, grid):
    from napari_pathviz._layers import patches_layer_data
    from napari_pathviz._qupath_layers import export_selected_patches, label_patches_layer

    write_geojson(tmp_path / "clusters.geojson", patch_features(grid, column="cluster"))
    viewer = make_napari_viewer()
    (shapes,) = viewer.open(tmp_path / "clusters.geojson", plugin=PLUGIN)
    assert shapes._type_string == "shapes"
    assert shapes.features["class"].tolist() == ["c0", "c1"]
    # QuPath's corner (x, y) is napari's world (y - 0.5, x - 0.5): the outline hugs the squares.
    corners = np.asarray(shapes.data[0])
    assert corners.min(axis=0).tolist() == [-0.5, -0.5]
    assert corners.max(axis=0).tolist() == [191.5, 511.5]

    data, kwargs, _ = patches_layer_data(PatchTable(grid))
    points = viewer.add_points(data, **kwargs)
    added = label_patches_layer(points, shapes)
    assert added == ["qupath_c0", "qupath_c1", "qupath_class"]
    assert (points.features["qupath_class"] == grid["cluster"]).all()

    points.selected_data = {0, 1, 8}
    assert export_selected_patches(points, tmp_path / "sel.geojson", class_name="picked") == 3
    (picked,) = read_geojson(tmp_path / "sel.geojson")
    assert picked.class_name == "picked" and picked.geometry.area == 3 * 64 * 64


def test_napari_reads_wsinfer_tiles_as_patches(make_napari_viewer, tmp_path, grid):
    write_geojson(tmp_path / "s1.geojson", patch_features(grid, object_type="tile"))
    viewer = make_napari_viewer()
    (points,) = viewer.open(tmp_path / "s1.geojson", plugin=PLUGIN)
    assert points._type_string == "points" and len(points.data) == len(grid)
    np.testing.assert_allclose(points.data[:, 1], grid["x"] + 31.5)


def test_napari_reports_a_bad_geojson_in_one_line(make_napari_viewer, tmp_path, notifications):
    (tmp_path / "bad.geojson").write_text(json.dumps({"type": "Polygon", "coordinates": []}))
    viewer = make_napari_viewer()
    viewer.open(tmp_path / "bad.geojson", plugin=PLUGIN)
    assert len(viewer.layers) == 0
    assert any("bad.geojson: not a GeoJSON FeatureCollection" in m for m in notifications)


def test_widget_exports_the_selection_and_labels_the_patches(
    make_napari_viewer, tmp_path, grid, notifications
):
    from napari_pathviz._layers import patches_layer_data
    from napari_pathviz._widgets._qupath import QuPathWidget

    viewer = make_napari_viewer()
    data, kwargs, _ = patches_layer_data(PatchTable(grid))
    points = viewer.add_points(data, **kwargs)
    widget = QuPathWidget(viewer)
    widget.out.value = tmp_path / "none.geojson"
    widget.label_button.clicked.emit()  # no annotations layer yet: one line, no traceback
    assert widget.status.value == "open a QuPath annotations layer first"
    assert "open a QuPath annotations layer first" in notifications

    points.selected_data = set(np.flatnonzero(grid["prob_tumor"] > 0.5).tolist())
    widget.class_name.value = "tumor"
    widget.out.value = tmp_path / "tumor.geojson"
    widget.export_button.clicked.emit()
    assert widget.status.value.startswith("wrote 24 patches")
    viewer.open(tmp_path / "tumor.geojson", plugin=PLUGIN)
    assert widget.annotations.value is viewer.layers[-1]
    widget.label_button.clicked.emit()
    expected = np.where(grid["prob_tumor"] > 0.5, "tumor", "NA")
    assert (points.features["qupath_class"] == expected).all()
    assert points.metadata["pathviz_color_by"] == "qupath_class"
