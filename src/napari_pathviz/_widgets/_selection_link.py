"""Selection linking between the embedding scatter and the patches layer on the slide.

A selection in the scatter draws the same patches in a highlight layer at once (napari only
draws a points selection while its layer is active) and selects them on the patches layer; a
selection on the layer highlights the scatter points. A re-entrancy guard stops the echo.

``SelectionLink`` is a mixin of the EmbeddingWidget; it uses the widget's ``_viewer``,
``scatter``, ``rows`` (scatter point i is row rows[i] of the patches layer), ``status``,
``_hover_text`` and ``_report``.
"""

from __future__ import annotations

import numpy as np

from ..errors import PathvizError

HIGHLIGHT_LAYER = "scatter selection"


class SelectionLink:
    """Scatter <-> patches-layer selection linking, mixed into the EmbeddingWidget."""

    _syncing = False  # re-entrancy guard between scatter and layer selections
    _linked_layer = None
    _pending_rows: np.ndarray | None = None  # a scatter selection not yet on the layer

    def _link(self, layer) -> None:
        if self._linked_layer is layer:
            return
        if self._linked_layer is not None:
            self._linked_layer.selected_data.events.items_changed.disconnect(
                self._layer_selection_changed
            )
        self._linked_layer = layer
        layer.selected_data.events.items_changed.connect(self._layer_selection_changed)

    def _scatter_selected(self, indices: np.ndarray, _additive: bool = False) -> None:
        """Scatter -> slide: outline the patches at once in the highlight layer, then select them
        on the patches layer. napari's selection setter is the slow part (psygnal adds items one
        by one), so it runs on the next event-loop turn, once for a burst of lassos."""
        layer = self._linked_layer
        if layer is None or self._syncing:
            return
        layer_rows = self.rows[np.asarray(indices, np.int64)]
        self._draw_highlight_layer(layer, layer_rows)
        first = self._pending_rows is None
        self._pending_rows = layer_rows
        if first:
            from qtpy.QtCore import QTimer

            QTimer.singleShot(0, self._apply_pending_selection)

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
        self._syncing = True
        try:
            selected = np.fromiter(layer.selected_data, np.int64)
            self.scatter.set_highlight(np.flatnonzero(np.isin(self.rows, selected)))
            self._draw_highlight_layer(layer, selected)
        finally:
            self._syncing = False

    def _draw_highlight_layer(self, layer, layer_rows: np.ndarray) -> None:
        """Bright outlines over the selected patches, visible whichever layer is active."""
        data = layer.data[layer_rows] if len(layer_rows) else np.zeros((0, 2))
        sizes = layer.size[layer_rows] if len(layer_rows) else 1
        if HIGHLIGHT_LAYER not in self._viewer.layers and not len(layer_rows):
            return  # nothing selected yet: no empty layer in the list
        if HIGHLIGHT_LAYER in self._viewer.layers:
            highlight = self._viewer.layers[HIGHLIGHT_LAYER]
            highlight.data = data
            highlight.size = sizes
        else:
            active = self._viewer.layers.selection.active
            self._viewer.add_points(
                data,
                name=HIGHLIGHT_LAYER,
                symbol="square",
                size=sizes,
                face_color="transparent",
                border_color="yellow",
                border_width=0.12,
                border_width_is_relative=True,
                scale=layer.scale,
                blending="translucent_no_depth",
            )
            # Keep the user's active layer: napari makes a new layer active.
            if active is not None:
                self._viewer.layers.selection.active = active

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
        camera = (
            self._viewer.scene.camera if hasattr(self._viewer, "scene") else self._viewer.camera
        )
        camera.center = tuple(centre)
        self.status.value = self._hover_text(index).replace("\n", "  ")

    def centre_on_selection(self) -> None:
        layer = self._linked_layer
        rows = self.selected_rows()
        if layer is None or not len(rows):
            self._report(PathvizError("Centre: select patches in the scatter first"))
            return
        centres = np.asarray(layer.data[rows]) * np.asarray(layer.scale[-2:])
        camera = (
            self._viewer.scene.camera if hasattr(self._viewer, "scene") else self._viewer.camera
        )
        camera.center = tuple(centres.mean(axis=0))
