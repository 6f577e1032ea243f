"""Helpers for napari tests that drive PathViz as a user does: widgets opened the way napari's
Plugins menu opens them, and lassos drawn with real Qt mouse events on the scatter's canvas."""

from __future__ import annotations

import time

import numpy as np

PLUGIN = "napari-pathviz"
# vispy's Qt backend drops a mouse move that comes within 10 ms of the previous one.
MOVE_GAP_S = 0.012


def open_widget(viewer, name: str):
    """A PathViz widget as napari's Plugins menu opens it (with its own proxy of the viewer)."""
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def raise_dock_of(native) -> None:
    """Brings the dock holding ``native`` to the front of its tab group, as a click on its tab."""
    from qtpy.QtWidgets import QApplication, QDockWidget

    parent = native
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    if parent is not None:
        parent.raise_()
    QApplication.processEvents()


def _mouse(kind, native, pos, button, buttons, modifiers) -> None:
    from qtpy.QtCore import QPointF
    from qtpy.QtGui import QMouseEvent
    from qtpy.QtWidgets import QApplication

    local = QPointF(float(pos[0]), float(pos[1]))
    event = QMouseEvent(kind, local, QPointF(native.mapToGlobal(local)), button, buttons, modifiers)
    QApplication.sendEvent(native, event)


def lasso(scatter, path, shift: bool = False) -> list:
    """A left-button drag along ``path`` (canvas pixels, y down) on the scatter's Qt widget:
    press at the first point, moves with the button held, release at the last; Shift held
    adds to the selection. The scatter's dock is raised first (PathViz docks are tabbed).
    A mouse reports whole pixels: returns the path as sent, rounded to them."""
    from qtpy.QtCore import QEvent, Qt
    from qtpy.QtWidgets import QApplication

    path = [(round(float(x)), round(float(y))) for x, y in path]
    native = scatter.native
    raise_dock_of(native)
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    modifiers = Qt.KeyboardModifier.ShiftModifier if shift else Qt.KeyboardModifier.NoModifier
    _mouse(QEvent.Type.MouseButtonPress, native, path[0], left, left, modifiers)
    for pos in path[1:]:
        time.sleep(MOVE_GAP_S)
        _mouse(QEvent.Type.MouseMove, native, pos, none, left, modifiers)
    time.sleep(MOVE_GAP_S)
    _mouse(QEvent.Type.MouseButtonRelease, native, path[-1], left, none, modifiers)
    QApplication.processEvents()
    return path


def rectangle_path(corner_a, corner_b) -> list:
    """The closed path around a rectangle, as a lasso drawn around it."""
    (x0, y0), (x1, y1) = corner_a, corner_b
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]


def points_inside(scatter, path) -> np.ndarray:
    """Indices of the scatter's points inside the polygon ``path`` (canvas pixels), computed
    apart from the widget: each point's data coordinates mapped to the canvas through vispy's
    own transform chain, then matplotlib's point-in-polygon test."""
    from matplotlib.path import Path

    transform = scatter.markers.get_transform("visual", "canvas")
    mapped = transform.map(np.asarray(scatter.coords, float))
    screen = mapped[:, :2] / mapped[:, 3:4]
    return np.flatnonzero(Path(np.asarray(path, float)).contains_points(screen))
