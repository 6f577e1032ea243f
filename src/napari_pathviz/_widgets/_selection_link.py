"""Selection linking between the embedding scatter and the patches layer on the slide.

Scatter -> slide: a lasso shows its patches at once in a highlight layer, "scatter selection":
a copy of the patches layer's squares (yellow outline, no fill) of which only the selected ones
are shown, so a lasso sets one boolean mask, whatever its size. napari's own points selection
(``layer.selected_data``) is set lazily: psygnal adds its items one by one (about 70 ms per
10,000 rows) and napari redraws its own highlight of them, so it waits until it is needed --
the patches layer becomes active, or a widget asks for the selection (``PatchesInUse``
flushes pending selections first) -- and, when the layer is already active, until the slide
has drawn the highlight.

Slide -> scatter: a selection made on the layer highlights the scatter points and the highlight
layer. A re-entrancy guard stops the echo.

``SelectionLink`` is a mixin of the EmbeddingWidget; it uses the widget's ``_viewer``,
``scatter``, ``rows`` (scatter point i is row rows[i] of the patches layer), ``status``,
``_hover_text`` and ``_report``.
"""

from __future__ import annotations

import numpy as np

from ..errors import PathvizError

HIGHLIGHT_LAYER = "scatter selection"
# When the patches layer is active, its selection is set this long after a lasso: the slide's
# frame with the highlight (requested at once, painted within a few ms) goes first.
AFTER_DRAW_MS = 40


class SelectionLink:
    """Scatter <-> patches-layer selection linking, mixed into the EmbeddingWidget."""

    _syncing = False  # re-entrancy guard between scatter and layer selections
    _linked_layer = None
    _pending_rows: np.ndarray | None = None  # a scatter selection not yet on the layer
    _highlight_source: np.ndarray | None = None  # the layer data the highlight layer copies
    _watching_active = False

    def _link(self, layer) -> None:
        if self._linked_layer is layer:
            return
        if self._linked_layer is not None:
            self._linked_layer.selected_data.events.items_changed.disconnect(
                self._layer_selection_changed
            )
        self._linked_layer = layer
        self._pending_rows = None
        layer.selected_data.events.items_changed.connect(self._layer_selection_changed)
        if not self._watching_active:
            self._viewer.layers.selection.events.active.connect(self._active_layer_changed)
            self._watching_active = True

    def _scatter_selected(self, indices: np.ndarray, _additive: bool = False) -> None:
        """Scatter -> slide: show the patches at once in the highlight layer; select them on the
        patches layer when that is needed (see the module docstring)."""
        layer = self._linked_layer
        if layer is None or self._syncing:
            return
        layer_rows = self.rows[np.asarray(indices, np.int64)]
        self._draw_highlight_layer(layer, layer_rows)
        self._pending_rows = layer_rows
        if self._viewer.layers.selection.active is layer:
            from qtpy.QtCore import QTimer

            QTimer.singleShot(AFTER_DRAW_MS, self._apply_pending_selection)

    def flush_selection(self) -> None:
        """Puts a pending scatter selection on the patches layer now."""
        if self._pending_rows is not None:
            self._apply_pending_selection()

    def _active_layer_changed(self, event=None) -> None:
        if self._pending_rows is not None and self._viewer.layers.selection.active is (
            self._linked_layer
        ):
            self._apply_pending_selection()

    def _apply_pending_selection(self) -> None:
        layer, rows = self._linked_layer, self._pending_rows
        self._pending_rows = None
        if layer is None or rows is None:
            return
        self._syncing = True
        try:
            layer.selected_data = set(rows.tolist())
        finally:
            self._syncing = False

    def _layer_selection_changed(self, *_args) -> None:
        """Slide -> scatter: highlight the scatter points of the patches selected on the layer."""
        layer = self._linked_layer
        if layer is None or self._syncing:
            return
        self._pending_rows = None  # a selection made on the slide replaces the scatter's
        self._syncing = True
        try:
            selected = np.fromiter(layer.selected_data, np.int64)
            self.scatter.set_highlight(np.flatnonzero(np.isin(self.rows, selected)))
            self._draw_highlight_layer(layer, selected)
        finally:
            self._syncing = False

    def _draw_highlight_layer(self, layer, layer_rows: np.ndarray) -> None:
        """Bright outlines over the selected patches, visible whichever layer is active."""
        if HIGHLIGHT_LAYER not in self._viewer.layers and not len(layer_rows):
            return  # nothing selected yet: no empty layer in the list
        highlight = self._highlight_layer(layer)
        shown = np.zeros(len(layer.data), bool)
        shown[np.asarray(layer_rows, np.int64)] = True
        highlight.shown = shown

    def _highlight_layer(self, layer):
        """The highlight layer for ``layer``: made (or remade, when the patches changed) as a
        hidden copy of its squares."""
        viewer = self._viewer
        if HIGHLIGHT_LAYER in viewer.layers:
            highlight = viewer.layers[HIGHLIGHT_LAYER]
            if self._highlight_source is layer.data and len(highlight.data) == len(layer.data):
                return highlight
            viewer.layers.remove(highlight)
        active = viewer.layers.selection.active
        highlight = viewer.add_points(
            layer.data,
            name=HIGHLIGHT_LAYER,
            symbol="square",
            size=layer.size,
            shown=np.zeros(len(layer.data), bool),
            face_color="transparent",
            border_color="yellow",
            border_width=0.12,
            border_width_is_relative=True,
            scale=layer.scale,
            blending="translucent_no_depth",
        )
        self._highlight_source = layer.data
        # Keep the user's active layer: napari makes a new layer active.
        if active is not None:
            viewer.layers.selection.active = active
        return highlight

    def highlighted_rows(self) -> np.ndarray:
        """Patches-layer rows outlined in the highlight layer (what the slide shows)."""
        if HIGHLIGHT_LAYER not in self._viewer.layers:
            return np.zeros(0, np.int64)
        return np.flatnonzero(self._viewer.layers[HIGHLIGHT_LAYER].shown)

    def selected_rows(self) -> np.ndarray:
        """Patches-layer rows of the current scatter selection."""
        return self.rows[self.scatter.selected]

    def jump_to(self, index: int) -> None:
        """Centres the slide view on the patch of scatter point ``index``."""
        layer = self._linked_layer
        if layer is None:
            return
        row = self.rows[index]
        centre = np.asarray(layer.data[row]) * np.asarray(layer.scale[-2:])
        self._camera().center = tuple(centre)
        self.status.value = self._hover_text(index).replace("\n", "  ")

    def centre_on_selection(self) -> None:
        layer = self._linked_layer
        rows = self.selected_rows()
        if layer is None or not len(rows):
            self._report(PathvizError("Centre: select patches in the scatter first"))
            return
        centres = np.asarray(layer.data[rows]) * np.asarray(layer.scale[-2:])
        self._camera().center = tuple(centres.mean(axis=0))

    def _camera(self):
        viewer = self._viewer
        return viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
