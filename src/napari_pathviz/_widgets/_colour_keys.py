"""Titled colour keys on the slide canvas: one per kind of map shown (an attribution method,
a prediction heatmap), stacked down the top right corner without overlap, each a whole title
over its colorbar, and shown only while a map it keys is visible.

napari draws an untitled colorbar per image layer and tiles the top right corner's overlays
side by side, so the keys of three methods ran off the canvas and cut their titles. A key here
is a one-pixel, fully transparent image layer named by its title: its colorbar and its name
overlay (the title) are what show, and the corner tiles top-down."""

from __future__ import annotations

import weakref

import numpy as np

META_KEY = "pathviz_key_of"  # on a key layer: what it keys
META_KEYED_BY = "pathviz_keyed_by"  # on a map layer: the key that explains its colours
KEY_POSITION = "top_right"
BAR_SIZE = (14.0, 100.0)  # px: four keys fit a laptop-sized canvas's height
TITLE_FONT_SIZE = 9.0
_WATCHED: weakref.WeakSet = weakref.WeakSet()  # viewers whose removals drop orphan keys


def show_key(viewer, key_of: str, title: str, colormap, limits, maps: list, scale=(1.0, 1.0)):
    """Adds (or replaces) the key ``key_of`` titled ``title`` for the layers ``maps`` (which
    share ``colormap`` and ``limits``): their own colorbars are hidden. Returns the key layer."""
    for layer in keys_of(viewer, key_of):
        viewer.layers.remove(layer)
    active = viewer.layers.selection.active
    key = viewer.add_image(
        np.zeros((1, 1), np.float32),
        name=title,
        colormap=colormap,
        contrast_limits=tuple(limits),
        scale=tuple(scale),
        opacity=0.0,  # the key's pixel is never seen; its colorbar and title are
    )
    key.metadata[META_KEY] = key_of
    # Keys stack top-down in their corner, each title over its bar (napari tiles the top right
    # side by side by default, which pushed the keys of several maps off the canvas).
    tiling = getattr(getattr(viewer, "canvas", None), "overlay_tiling", None)  # napari >= 0.6
    if tiling is not None:
        tiling.top_right = "vertical"
    bar, title_overlay = key.colorbar, key.name_overlay
    bar.size = BAR_SIZE
    bar.position = title_overlay.position = KEY_POSITION
    bar.box = title_overlay.box = True  # readable over any tissue
    title_overlay.font_size = TITLE_FONT_SIZE
    bar.visible = title_overlay.visible = True
    for layer in maps:
        layer.metadata[META_KEYED_BY] = key_of
        if hasattr(layer, "colorbar"):
            layer.colorbar.visible = False  # the key's bar stands for all of them
        layer.events.visible.connect(lambda _event: sync_keys(viewer))
    if active is not None and active in viewer.layers:
        viewer.layers.selection.active = active
    sync_keys(viewer)
    _watch_removals(viewer)
    return key


def _watch_removals(viewer) -> None:
    """Once per viewer: a key goes with the last map it keys."""
    import wrapt  # napari hands widgets proxies of the viewer: watch the viewer itself

    while isinstance(viewer, wrapt.ObjectProxy):
        viewer = viewer.__wrapped__
    if viewer in _WATCHED:
        return
    _WATCHED.add(viewer)

    def removed(_event) -> None:
        from qtpy.QtCore import QTimer

        # Not from inside the layer list's own removal event.
        QTimer.singleShot(0, lambda: remove_orphan_keys(viewer))

    viewer.layers.events.removed.connect(removed)


def keys_of(viewer, key_of: str | None = None) -> list:
    """The key layers of the viewer (of ``key_of`` only, when given)."""
    return [
        layer
        for layer in viewer.layers
        if META_KEY in layer.metadata and key_of in (None, layer.metadata[META_KEY])
    ]


def keyed_maps(viewer, key_of: str) -> list:
    return [layer for layer in viewer.layers if layer.metadata.get(META_KEYED_BY) == key_of]


def sync_keys(viewer) -> None:
    """Shows each key while one of its maps is visible; hides the others (a hidden map's key
    would only crowd the corner)."""
    for key in keys_of(viewer):
        wanted = any(layer.visible for layer in keyed_maps(viewer, key.metadata[META_KEY]))
        if key.visible != wanted:
            key.visible = wanted


def remove_orphan_keys(viewer) -> None:
    """Removes the keys none of whose maps is left; call it outside the layer list's own
    removal event (napari does not allow removing from inside it)."""
    for key in keys_of(viewer):
        if not keyed_maps(viewer, key.metadata[META_KEY]) and key in viewer.layers:
            viewer.layers.remove(key)
