"""Selection linking between the embedding scatter and the patches layer on the slide.

Scatter -> slide: a lasso shows its patches at once in a highlight layer, "scatter selection"
(their squares, yellow outline, no fill), drawn on the slide whichever layer is active.
napari's own points selection (``layer.selected_data``) is set lazily: psygnal adds its items one by one (about 70 ms per
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
from ._viewer_state import real_viewer, same, unwrap

HIGHLIGHT_LAYER = "scatter selection"
# Where the viewer's canvas cannot be reached, an active layer's selection is set this long
# after a lasso instead of after the slide's next frame.
AFTER_DRAW_MS = 200


class SelectionLink:
    """Scatter <-> patches-layer selection linking, mixed into the EmbeddingWidget."""

    _syncing = False  # re-entrancy guard between scatter and layer selections
    _linked_layer = None
    _pending_rows: np.ndarray | None = None  # a scatter selection not yet on the layer
    _highlighted = np.zeros(0, np.int64)  # patches-layer rows the highlight layer outlines
    _uniform_size = True  # every patch of the linked layer has the same size
    _watching_active = False

    def _link(self, layer) -> None:
        layer = unwrap(layer)  # the layer itself, not a widget's proxy of it
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
        if same(self._viewer.layers.selection.active, layer):
            _after_next_frame(self._viewer, self.flush_selection)

    def flush_selection(self) -> None:
        """Puts a pending scatter selection on the patches layer now."""
        if self._pending_rows is not None:
            self._apply_pending_selection()

    def _active_layer_changed(self, event=None) -> None:
        if self._pending_rows is not None and same(
            self._viewer.layers.selection.active, self._linked_layer
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
        """Bright outlines over the selected patches, visible whichever layer is active.

        napari re-checks every point's symbol when a points layer grows (about 6 us a point),
        so the layer never shrinks: a smaller selection repeats its first square to the
        layer's length (drawn over itself, unseen), and an empty one hides the layer."""
        viewer = self._viewer
        layer_rows = np.asarray(layer_rows, np.int64)
        self._highlighted = layer_rows
        if HIGHLIGHT_LAYER not in viewer.layers and not len(layer_rows):
            return  # nothing selected yet: no empty layer in the list
        highlight = self._highlight_layer(layer)
        if not len(layer_rows):
            highlight.visible = False
            return
        rows = layer_rows
        if len(rows) < len(highlight.data):
            rows = np.concatenate([rows, np.full(len(highlight.data) - len(rows), rows[0])])
        if not self._uniform_size:
            highlight.current_size = float(layer.size[rows[0]])
        highlight.data = layer.data[rows]
        if not self._uniform_size:
            highlight.size = layer.size[rows]
        if not highlight.visible:
            highlight.visible = True

    def _highlight_layer(self, layer):
        """The highlight layer, made on first use with the look of ``layer``'s squares."""
        viewer = self._viewer
        if HIGHLIGHT_LAYER in viewer.layers:
            highlight = viewer.layers[HIGHLIGHT_LAYER]
        else:
            active = viewer.layers.selection.active
            highlight = viewer.add_points(
                np.zeros((0, layer.data.shape[1])),
                name=HIGHLIGHT_LAYER,
                symbol="square",
                face_color="transparent",
                border_color="yellow",
                border_width=0.12,
                border_width_is_relative=True,
                blending="translucent_no_depth",
            )
            # Keep the user's active layer: napari makes a new layer active.
            if active is not None:
                viewer.layers.selection.active = active
        sizes = np.asarray(layer.size, float)
        self._uniform_size = bool(len(sizes)) and bool(np.all(sizes == sizes[0]))
        if self._uniform_size:
            highlight.current_size = float(sizes[0])
            if len(highlight.size) and highlight.size[0] != sizes[0]:
                highlight.size = float(sizes[0])
        if tuple(highlight.scale) != tuple(layer.scale):
            highlight.scale = layer.scale
        return highlight

    def highlighted_rows(self) -> np.ndarray:
        """Patches-layer rows outlined in the highlight layer (what the slide shows)."""
        if HIGHLIGHT_LAYER not in self._viewer.layers:
            return np.zeros(0, np.int64)
        if not self._viewer.layers[HIGHLIGHT_LAYER].visible:
            return np.zeros(0, np.int64)
        return np.unique(self._highlighted)

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


def _after_next_frame(viewer, callback) -> None:
    """Runs ``callback`` once the viewer's canvas has drawn its next frame (a timer where the
    canvas cannot be reached): the slide shows the highlight before napari's selection work."""
    from qtpy.QtCore import QTimer

    # napari has no public "frame drawn" event; through the real viewer, as napari's proxy
    # warns on private names. Where it is gone, the timer serves.
    qt_viewer = getattr(getattr(real_viewer(viewer), "window", None), "_qt_viewer", None)
    scene = getattr(getattr(qt_viewer, "canvas", None), "_scene_canvas", None)
    if scene is None:
        QTimer.singleShot(AFTER_DRAW_MS, callback)
        return
    fired = []

    def drawn(_event=None) -> None:
        if not fired:  # disconnected on the next turn, not while vispy iterates its callbacks
            fired.append(True)
            QTimer.singleShot(0, finish)

    def finish() -> None:
        scene.events.draw.disconnect(drawn)
        callback()

    scene.events.draw.connect(drawn, position="last")
