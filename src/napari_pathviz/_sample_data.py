"""napari sample data: the demo IHC slide with its labelled patches."""

from __future__ import annotations

from ._demo import load_demo
from ._layers import patches_layer_data, slide_layer_data


def make_demo_sample() -> list:
    slide, table = load_demo()
    return [slide_layer_data(slide), patches_layer_data(table, color_by="annotation")]
