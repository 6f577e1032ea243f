"""A scrollable view of an attribution gallery (patch, overlay, class and probability side by
side), docked beside the viewer so the maps can be read patch by patch at full size."""

from __future__ import annotations

import numpy as np
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QLabel, QScrollArea

GALLERY_DOCK = "Attribution gallery"


class GalleryView(QScrollArea):
    def __init__(self):
        super().__init__()
        self.label = QLabel()
        self.setWidget(self.label)
        self.setWidgetResizable(False)
        self.setMinimumHeight(300)

    def show_image(self, rgba: np.ndarray) -> None:
        rgba = np.ascontiguousarray(rgba)
        height, width = rgba.shape[:2]
        # copy(): the QImage must own its pixels once the array goes away.
        image = QImage(rgba.data, width, height, 4 * width, QImage.Format.Format_RGBA8888).copy()
        self.label.setPixmap(QPixmap.fromImage(image))
        self.label.resize(width, height)


def show_gallery(viewer, rgba: np.ndarray, view: GalleryView | None) -> GalleryView:
    """Shows ``rgba`` in the gallery dock, creating the dock the first time (or again after
    the user closed it)."""
    if view is None or GALLERY_DOCK not in viewer.window.dock_widgets:
        view = GalleryView()
        viewer.window.add_dock_widget(view, name=GALLERY_DOCK, area="right", tabify=True)
    view.show_image(rgba)
    dock = view.parent()  # napari's dock wrapper: shown and raised again if hidden behind tabs
    if dock is not None:
        dock.show()
        dock.raise_()
    return view
