"""Finding the layers a widget works on, by the metadata key pathviz gives them."""

from __future__ import annotations


def layer_with(viewer, key: str):
    """The active layer when it carries ``key`` in its metadata, else the most recent such
    layer, else None."""
    active = viewer.layers.selection.active
    if active is not None and key in active.metadata:
        return active
    found = [layer for layer in viewer.layers if key in layer.metadata]
    return found[-1] if found else None
