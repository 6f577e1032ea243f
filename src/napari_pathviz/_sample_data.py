"""napari sample data: the demo IHC slide with its labelled patches and, named in the patches
layer's metadata, the demo embeddings: the embedding explorer runs their UMAP into its scatter
(napari's File > Open Sample > PathViz)."""

from __future__ import annotations

from ._demo import demo_embeddings_path, load_demo
from ._layers import patches_layer_data, slide_layer_data

# The patches-layer metadata key the embedding explorer reads (widgets.embedding.META_EMBEDDINGS;
# repeated here so that opening the sample does not import Qt).
META_EMBEDDINGS = "pathviz_embeddings"


def make_demo_sample() -> list:
    slide, table = load_demo()
    data, kwargs, kind = patches_layer_data(table, color_by="annotation")
    kwargs["metadata"] = {
        **kwargs.get("metadata", {}),
        META_EMBEDDINGS: str(demo_embeddings_path()),
    }
    return [slide_layer_data(slide), (data, kwargs, kind)]
