"""A QuPath GeoJSON of many annotations opens in napari without freezing the GUI for long:
napari triangulates each polygon of a shapes layer on the GUI thread, and its Python fallback
took ~20 s for 1,000 annotations (the compiled bermuda backend, a dependency: ~1 s)."""

from __future__ import annotations

import time

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari_pathviz.io.geojson import GeoFeature, write_geojson  # noqa: E402

N_ANNOTATIONS = 1000


def _annotations(n: int, vertices: int = 40) -> list[GeoFeature]:
    """``n`` star-shaped cell-like polygons of ``vertices`` corners over a 20k px slide."""
    from shapely.geometry import Polygon

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        cx, cy = rng.uniform(0, 20_000, 2)
        angles = np.sort(rng.uniform(0, 2 * np.pi, vertices))
        radius = rng.uniform(50, 150) * (1 + 0.3 * rng.uniform(-1, 1, vertices))
        polygon = Polygon(np.c_[cx + radius * np.cos(angles), cy + radius * np.sin(angles)])
        if polygon.is_valid:
            out.append(GeoFeature(geometry=polygon, class_name=f"class {i % 3}", index=i))
    return out


def test_a_thousand_annotations_open_in_seconds(make_napari_viewer, tmp_path):
    features = _annotations(N_ANNOTATIONS)
    path = tmp_path / "cells.geojson"
    write_geojson(path, features)
    viewer = make_napari_viewer()
    start = time.perf_counter()
    (layer,) = viewer.open(str(path), plugin="napari-pathviz")  # the first shapes layer
    seconds = time.perf_counter() - start
    assert layer.nshapes == len(features)
    assert seconds < 10.0, f"{seconds:.1f} s on the GUI thread"
    first = np.asarray(features[0].geometry.exterior.coords)[:-1, ::-1] - 0.5  # (y, x) world
    np.testing.assert_allclose(layer.data[0], first)
