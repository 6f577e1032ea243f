"""Opening the slides of a cohort in the viewer, on demand: one at a time (the previous one's
layers are removed) or side by side (each new slide translated to the right of the previous).

Each opened slide gets an image layer named by its ID and a points layer of its patches
(``"{ID} patches"``); ``OpenSlide.rows[j]`` is the cohort row of the points layer's point j,
so a selection on the slide maps back to the cohort scatter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import PathvizError

LAYOUTS = ("one slide at a time", "side by side")
GAP = 0.05  # side by side: this fraction of the previous slide's width between slides


@dataclass
class OpenSlide:
    slide_id: str
    image: object  # napari Image layer
    points: object  # napari Points layer
    rows: np.ndarray  # cohort row of each point
    offset_x: float

    def layer_rows(self, cohort_rows) -> np.ndarray:
        """Points-layer indices of the given cohort rows (those of this slide)."""
        return np.flatnonzero(np.isin(self.rows, np.asarray(cohort_rows, np.int64)))


class CohortSlides:
    """The cohort's slides open in ``viewer``; ``on_selection(open_slide)`` is called when the
    selection of an opened slide's patches layer changes (not while we set it)."""

    def __init__(self, viewer, on_selection):
        self.viewer = viewer
        self.on_selection = on_selection
        self.opened: dict[str, OpenSlide] = {}
        self.layout = LAYOUTS[0]
        self._setting = False
        self._cache: dict[str, object] = {}  # ID -> Slide (opened once, lazy)

    def slide(self, slide_id: str, path: str | None):
        """The Slide of an ID (opened once); PathvizError when it has no file or does not open."""
        from ..slide import open_slide

        if slide_id not in self._cache:
            if not path:
                raise PathvizError(f"slide {slide_id}: no file known (slides table)")
            self._cache[slide_id] = open_slide(path)
        return self._cache[slide_id]

    def open(self, slide_id: str, path: str | None, rows: pd.DataFrame, cohort_rows, color_by):
        """The slide's OpenSlide, opening it (with its patches layer) when not open yet."""
        if slide_id in self.opened:
            return self.opened[slide_id]
        slide = self.slide(slide_id, path)
        if self.layout == LAYOUTS[0]:
            self.close_all()
        offset = self._next_offset()
        return self._add(slide_id, slide, rows, np.asarray(cohort_rows, np.int64), color_by, offset)

    def _next_offset(self) -> float:
        right = 0.0
        for shown in self.opened.values():
            width = (
                shown.image.data[0].shape[1]
                if shown.image.multiscale
                else shown.image.data.shape[1]
            )
            right = max(right, shown.offset_x + width * (1 + GAP))
        return right

    def _add(self, slide_id, slide, rows, cohort_rows, color_by, offset) -> OpenSlide:
        from napari.layers import Layer

        from .._layers import patches_layer_data, slide_layer_data
        from ..patches import PatchTable

        data, kwargs, kind = slide_layer_data(slide)
        kwargs.update(name=slide_id, translate=(0.0, offset))
        image = self.viewer.add_layer(Layer.create(data, kwargs, kind))
        table = PatchTable.from_frame(rows.reset_index(drop=True), f"cohort: {slide_id}")
        column = color_by if color_by in table.df.columns else None
        data, kwargs, kind = patches_layer_data(table, color_by=column, name=f"{slide_id} patches")
        kwargs["translate"] = (0.0, offset)
        points = self.viewer.add_layer(Layer.create(data, kwargs, kind))
        shown = OpenSlide(slide_id, image, points, cohort_rows, offset)
        points.selected_data.events.items_changed.connect(lambda *_: self._selected(shown))
        self.opened[slide_id] = shown
        return shown

    def _selected(self, shown: OpenSlide) -> None:
        if not self._setting and shown.slide_id in self.opened:
            self.on_selection(shown)

    def select(self, shown: OpenSlide, layer_rows) -> None:
        """Sets the patches layer's selection (no on_selection echo) and makes it active."""
        self._setting = True
        try:
            shown.points.selected_data = set(np.asarray(layer_rows, np.int64).tolist())
        finally:
            self._setting = False
        self.viewer.layers.selection.active = shown.points
        shown.points.mode = "select"  # napari outlines the selected points in this mode

    def centre_on(self, shown: OpenSlide, layer_row: int) -> None:
        """Centres the view on one patch of the slide, zoomed so it is about 1/8 of the view."""
        y, x = np.asarray(shown.points.data[layer_row], float)
        size = float(np.atleast_1d(shown.points.size)[layer_row])
        camera = camera_of(self.viewer)
        camera.center = (y, x + shown.offset_x)
        camera.zoom = min(canvas_size(self.viewer)) / (8 * max(size, 1.0))

    def forget(self) -> None:
        """A new cohort: close its slides and forget the opened files."""
        self.close_all()
        self._cache.clear()

    def close_all(self) -> None:
        for shown in list(self.opened.values()):
            for layer in (shown.points, shown.image):
                if layer in self.viewer.layers:
                    self.viewer.layers.remove(layer)
        self.opened.clear()


def canvas_size(viewer) -> tuple[int, int]:
    """The canvas's (height, width) in screen pixels, through napari's public canvas model
    (``viewer.canvas.size``, napari 0.6+; the private ``_canvas_size`` warned on every slide
    opened); 600 x 600 where there is none."""
    size = getattr(getattr(viewer, "canvas", None), "size", None)
    return (int(size[0]), int(size[1])) if size is not None and min(size) > 0 else (600, 600)


def camera_of(viewer):
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera
