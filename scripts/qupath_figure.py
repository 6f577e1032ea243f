"""README figure docs/qupath_annotations.png: two QuPath annotations (Tumor, Stroma; written here
as a QuPath GeoJSON export) over the demo slide, the patches coloured by the class that
`label_patches_layer` (what "Label patches" and `pathviz annotate` do) gives them.

Nothing in it is random: the annotations are fixed polygons on the demo slide, which is built
from a fixed seed (napari_pathviz._demo), so every run draws the same figure. Needs a display (run it
under `xvfb-run -a -s "-screen 0 1600x1000x24"` on a headless machine).

    .venv/bin/python scripts/qupath_figure.py [--out docs/qupath_annotations.png]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def annotation(geometry, name: str, color: list[int]) -> dict:
    """One QuPath annotation as QuPath exports it (objectType, classification name + colour)."""
    import shapely

    return {
        "type": "Feature",
        "geometry": json.loads(shapely.to_geojson(geometry)),
        "properties": {
            "objectType": "annotation",
            "classification": {"name": name, "color": color},
        },
    }


def write_annotations(path: Path) -> Path:
    """A round Tumor region and a Stroma band, in level-0 pixels of the demo slide."""
    import shapely

    tumor = shapely.Point(600, 700).buffer(330)
    stroma = shapely.Polygon([(1050, 150), (1700, 300), (1650, 800), (1150, 650)])
    features = [
        annotation(tumor, "Tumor", [200, 0, 0]),
        annotation(stroma, "Stroma", [0, 120, 200]),
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "qupath_annotations.png"))
    args = parser.parse_args()

    import napari
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    from napari_pathviz._demo import ensure_demo_data
    from napari_pathviz._layers import patches_layer_data, recolor_patches_layer, slide_layer_data
    from napari_pathviz._qupath_layers import label_patches_layer
    from napari_pathviz._reader import read_geojson_layers
    from napari_pathviz.patches import load_patches
    from napari_pathviz.slide import open_slide

    work = Path(tempfile.mkdtemp(prefix="qupath_figure_"))
    paths = ensure_demo_data(work / "demo")
    slide, table = open_slide(paths["slide"]), load_patches(paths["patches"])
    geojson = write_annotations(work / "demo_annotations.geojson")

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1000, 800)
    data, kwargs, _ = slide_layer_data(slide)
    viewer.add_image(data, **kwargs)
    data, kwargs, _ = patches_layer_data(table)
    points = viewer.add_points(data, **kwargs)
    ((shape_data, shape_kwargs, _),) = read_geojson_layers(str(geojson))
    shapes = viewer.add_shapes(shape_data, **shape_kwargs)
    label_patches_layer(points, shapes)
    recolor_patches_layer(points, "qupath_class")
    print("patches per class:", points.features["qupath_class"].value_counts().to_dict())
    viewer.reset_view()
    for _ in range(40):  # let the canvas draw every layer before the screenshot
        QApplication.processEvents()
        time.sleep(0.05)
    image = viewer.screenshot(canvas_only=True, flash=False)[..., :3]
    # Cropped to the slide: the canvas's black margins around it carry nothing.
    drawn = np.flatnonzero(image.any(axis=(1, 2))), np.flatnonzero(image.any(axis=(0, 2)))
    image = image[drawn[0][0] : drawn[0][-1] + 1, drawn[1][0] : drawn[1][-1] + 1]
    Image.fromarray(image).convert("RGB").save(args.out, optimize=True)
    print(f"{args.out}: {image.shape[1]} x {image.shape[0]} px")
    viewer.close()


if __name__ == "__main__":
    main()
