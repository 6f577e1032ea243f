"""The patches layer in use: one per viewer, shared by every PathViz dock widget.

Every widget reads its patch table, its selection and its colour column from this one layer and
shows its name in a "Patches" combo; picking another layer in any widget's combo changes it for
all of them. A new patches layer (a second table, a tissue grid, a ``umap_coords.csv`` opened
with File > Open) does not take over: it becomes the layer in use only when none is in use, so
a selection made in the scatter is the one that Explain and Run act on.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np
from magicgui.widgets import ComboBox
from psygnal import Signal

from .._layers import META_COLOR_BY
from ._viewer_state import per_viewer, unwrap


def patches_in_use(viewer) -> PatchesInUse:
    """The viewer's one PatchesInUse, made on first use: the same for every widget, whatever
    proxy of the viewer napari handed it (see ``_viewer_state``)."""
    return per_viewer(viewer, PatchesInUse)


def is_patches_layer(layer) -> bool:
    return META_COLOR_BY in layer.metadata


class PatchesInUse:
    """Which patches layer the widgets act on. ``changed`` carries the new layer (or None);
    ``choices_changed`` fires when patches layers come, go or are renamed; ``columns_changed``
    when the columns (features) of the layer in use change, e.g. after a model run."""

    changed = Signal(object)
    choices_changed = Signal()
    columns_changed = Signal()
    color_changed = Signal(object)  # the colour column, picked in any widget

    def __init__(self, viewer):
        viewer = unwrap(viewer)  # events then carry real layers, and the list holds them
        self._viewer_ref = weakref.ref(viewer)
        self._layer = None
        # Widgets that hold a selection not yet on the layer (the scatter sets it lazily)
        # register a function that puts it there; selected_rows() calls them first.
        self._pending_selections: list = []  # weak references to flush functions
        viewer.layers.events.inserted.connect(self._inserted)
        viewer.layers.events.removed.connect(self._removed)
        for layer in viewer.layers:
            self._watch_name(layer)
        found = self.layers()
        if found:
            self._layer = found[-1]
            self._layer.events.features.connect(self._features_changed)

    # -- reading -------------------------------------------------------------------------------
    @property
    def viewer(self):
        return self._viewer_ref()

    @property
    def layer(self):
        """The patches layer in use, or None when the viewer has none."""
        return self._layer

    @property
    def name(self) -> str | None:
        return None if self._layer is None else self._layer.name

    def layers(self) -> list:
        viewer = self._viewer_ref()
        return [] if viewer is None else [ly for ly in viewer.layers if is_patches_layer(ly)]

    @property
    def color_column(self) -> str | None:
        """The column the patches (on the slide and in the scatter) are coloured by."""
        return None if self._layer is None else self._layer.metadata.get(META_COLOR_BY)

    def set_color(self, column: str | None) -> None:
        """Colours the patches layer in use by ``column``, for every widget (the slide's
        squares here, the scatter and the Colour by combos through ``color_changed``)."""
        from .._layers import recolor_patches_layer

        layer = self._layer
        if layer is None or not column:
            return  # (the same column again recolours: its values may have changed)
        recolor_patches_layer(layer, column)
        self.color_changed.emit(column)

    def names(self) -> list[str]:
        return [ly.name for ly in self.layers()]

    def selected_rows(self) -> np.ndarray:
        """Sorted rows of the layer in use that are selected, wherever they were selected."""
        self.flush_pending()
        if self._layer is None:
            return np.zeros(0, np.int64)
        return np.sort(np.fromiter(self._layer.selected_data, np.int64))

    def flush_pending(self) -> None:
        """Puts every widget's pending selection on the layer (before anything reads it)."""
        for ref in list(self._pending_selections):
            flush = ref()
            if flush is not None:
                flush()

    def add_pending_selection(self, flush: Callable[[], None]) -> None:
        """``flush()`` puts a widget's pending selection on the layer; held weakly when it is a
        widget's method, so the widget may go first."""
        if hasattr(flush, "__self__"):
            self._pending_selections.append(weakref.WeakMethod(flush))
        else:
            self._pending_selections.append(lambda: flush)

    # -- changing ------------------------------------------------------------------------------
    def set(self, layer_or_name) -> None:
        """Makes a patches layer (or the one of that name) the layer in use, for every widget."""
        layer = unwrap(layer_or_name)  # a widget's proxy of the layer: compared by ``is`` here
        if isinstance(layer_or_name, str):
            layer = next((ly for ly in self.layers() if ly.name == layer_or_name), None)
        if layer is not None and not is_patches_layer(layer):
            layer = None
        if layer is self._layer:
            return
        if self._layer is not None:
            self._layer.events.features.disconnect(self._features_changed)
        self._layer = layer
        if layer is not None:
            layer.events.features.connect(self._features_changed)
        self.changed.emit(layer)

    def _features_changed(self, _event=None) -> None:
        self.columns_changed.emit()

    def _inserted(self, event) -> None:
        layer = event.value
        self._watch_name(layer)
        if is_patches_layer(layer):
            self.choices_changed.emit()
            if self._layer is None:
                self.set(layer)

    def _removed(self, event) -> None:
        if is_patches_layer(event.value):
            self.choices_changed.emit()
        if event.value is self._layer:
            found = self.layers()
            self.set(found[-1] if found else None)

    def _watch_name(self, layer) -> None:
        layer.events.name.connect(lambda _e: self.choices_changed.emit())


def follow(signal, callback: Callable) -> None:
    """Connects a widget's ``callback`` to a PatchesInUse signal for as long as the widget lives:
    held weakly, and dropped once Qt has deleted the widget (a dock closed on its own), so one
    closed widget never stops the others hearing of a change."""
    ref = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else (lambda: callback)

    def call(*args) -> None:
        function = ref()
        if function is None:
            signal.disconnect(call)
            return
        try:
            function(*args)
        except RuntimeError as err:  # "wrapped C/C++ object ... has been deleted"
            if "deleted" not in str(err):
                raise
            signal.disconnect(call)

    signal.connect(call)


def patches_combo(in_use: PatchesInUse, on_change: Callable | None = None) -> ComboBox:
    """The "Patches" combo every widget shows: the layer in use, changed for all widgets here.
    ``on_change(layer)`` runs when the layer in use changes, from any widget."""
    combo = ComboBox(
        label="Patches",
        choices=lambda _w=None: in_use.names(),
        nullable=True,
        tooltip="the patches layer every PathViz widget acts on (its selection, its columns); "
        "changing it here changes it in every widget",
    )

    def show_in_use(_layer=None) -> None:
        with combo.changed.blocked():
            combo.reset_choices()
            combo.value = in_use.name if in_use.name in combo.choices else None

    def picked(name) -> None:
        if name and name != in_use.name:
            in_use.set(name)

    show_in_use()
    combo.changed.connect(picked)
    follow(in_use.changed, show_in_use)
    follow(in_use.choices_changed, show_in_use)
    if on_change is not None:
        follow(in_use.changed, on_change)
    return combo
