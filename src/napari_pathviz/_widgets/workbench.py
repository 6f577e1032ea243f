"""Plugins > PathViz > Workbench: the demo's three-column layout on whatever the viewer holds."""

from __future__ import annotations

import napari
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

from ._dock_layout import dock_of, join_pathviz_tabs, keep_on_screen
from ._viewer_state import real_viewer


class WorkbenchWidget(QWidget):
    """Opens the four workbench docks (Slide & patches, Model inference, Attributions, the
    Embedding explorer) and lays them out as ``pathviz demo`` does: the explorer on the left,
    the others in one tab group on the right, the slide canvas in the middle. The layers
    already open stay; the widgets pick up the patches layer in use.

    Its own dock only carries out the layout: it hides itself once done, so choosing the menu
    entry again (which shows it) lays the docks out again."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        join_pathviz_tabs(self)  # a tab for the moment it is shown: the window does not grow
        self._viewer = viewer
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Laying out the PathViz workbench…"))

    def showEvent(self, event) -> None:
        super().showEvent(event)
        QTimer.singleShot(0, self.lay_out)  # once napari has docked this widget

    def lay_out(self) -> dict:
        """Docks and arranges the workbench's widgets; returns them by name."""
        from .._demo_viewer import dock_pathviz_widgets

        own_dock = dock_of(self)
        if own_dock is not None:
            own_dock.hide()
        viewer = real_viewer(self._viewer)  # the window's private Qt parts are needed here
        widgets = dock_pathviz_widgets(viewer)
        window = viewer.window._qt_window
        if own_dock is not None:
            # Its place, hidden, is a tab of the right column: shown again from the menu, it
            # comes back there, not stacked under the column (the window would grow).
            slide_dock = dock_of(widgets["Slide & patches"].native)
            window.tabifyDockWidget(slide_dock, own_dock)
            own_dock.hide()
            slide_dock.raise_()
        keep_on_screen(window)
        return widgets
