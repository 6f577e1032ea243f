"""The demo in napari: the demo slide, its patches and the plugin's dock widgets."""

from __future__ import annotations

from ._layers import patches_layer_data, slide_layer_data

PLUGIN = "napari-pathviz"
DOCK_WIDGETS = ("Slide & patches", "Model inference", "Attributions", "Embedding explorer")
TABBED = ("Model inference", "Attributions")  # share a tab group with the widget before them
EXPLORER = "Embedding explorer"
COLUMN_WIDTH = 360  # each side column at 1440 px: 360 + 720 (the canvas) + 360


def dock_pathviz_widgets(viewer) -> dict:
    """The plugin's dock widgets (by name), laid out for a 1440 x 900 screen: Slide & patches,
    Model inference and Attributions share one tab group on the right, the Embedding explorer
    has the left column to itself, full height, so its scatter is about square; the slide
    canvas keeps the middle half of the window."""
    docks = {
        name: viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=name in TABBED)
        for name in DOCK_WIDGETS
    }
    _explorer_on_the_left(viewer, docks[EXPLORER][0])
    docks[DOCK_WIDGETS[0]][0].raise_()  # the tab to start from: open a slide
    widgets = {name: widget for name, (_dock, widget) in docks.items()}
    widgets["Slide & patches"].show_ampersand_in_tab()
    columns = [docks[EXPLORER][0], docks[DOCK_WIDGETS[0]][0]]
    _keep_column_widths(viewer, columns)
    return widgets


def _explorer_on_the_left(viewer, dock) -> None:
    """Moves the explorer's dock to the left column, in a tab group with napari's layer
    controls and layer list, the explorer in front.

    Why tabs: stacked under napari's two docks the scatter would again be a strip (the issue
    with the old layout), and a third column would take the canvas' half. The layer list and
    controls stay one click away (their tabs sit under the explorer); a user of the workbench
    mostly works in the scatter and on the slide, and File > Window lists every dock."""
    from qtpy.QtCore import Qt

    window = viewer.window._qt_window
    window.removeDockWidget(dock)
    dock.area, dock.qt_area = "left", Qt.DockWidgetArea.LeftDockWidgetArea
    window.addDockWidget(dock.qt_area, dock)
    dock.show()
    qt_viewer = viewer.window._qt_viewer
    napari_docks = [qt_viewer.dockLayerControls, qt_viewer.dockLayerList]
    window.tabifyDockWidget(napari_docks[0], napari_docks[1])
    window.tabifyDockWidget(napari_docks[1], dock)
    dock.raise_()


def _keep_column_widths(viewer, docks) -> None:
    """Sets the two columns' widths now and once Qt has laid the docks out (it may undo the
    first)."""
    from qtpy.QtCore import QTimer

    _column_widths(viewer, docks)
    QTimer.singleShot(0, lambda: _column_widths(viewer, docks))


def _column_widths(viewer, docks) -> None:
    from qtpy.QtCore import Qt

    try:
        window = viewer.window._qt_window
        width = min(COLUMN_WIDTH, window.width() // 4)
        window.resizeDocks(docks, [width] * len(docks), Qt.Orientation.Horizontal)
    except (RuntimeError, AttributeError):
        pass  # the viewer was closed first


def populate_demo_viewer(
    viewer, slide, table, embedding=None, widgets=None, directory=None
) -> dict:
    """Slide and patches as layers, the plugin's dock widgets (returned by name; docked unless
    ``widgets`` are given), and, given ``embedding`` = (EmbeddingSet, coords), the embedding
    explorer filled with it."""
    from napari.layers import Layer

    from ._demo import demo_embeddings_path

    layers = [
        viewer.add_layer(Layer.create(data, kwargs, kind))
        for data, kwargs, kind in (
            slide_layer_data(slide),
            patches_layer_data(table, color_by="annotation"),
        )
    ]
    widgets = widgets or dock_pathviz_widgets(viewer)
    for name in ("Model inference", "Attributions"):
        widgets[name].form.prefill_demo()  # the demo model, ready to run
    explorer = widgets["Embedding explorer"]
    explorer.embeddings_path.value = str(demo_embeddings_path(directory))
    if embedding is not None:
        es, coords = embedding
        explorer.write_coords_to_layer(layers[1], es.table.df, coords)
        # The demo computed (or cached) this UMAP: the explorer says it is done, as after a run.
        explorer.status.value = f"UMAP of {len(coords)} patches"
        explorer.progress.value = 100
        explorer.color_by.value = "annotation"
    viewer.layers.selection.active = layers[1]
    viewer.reset_view()
    return widgets


def explain_top_patches(widget, n: int = 8):
    """Starts the Attributions widget on the demo's most DAB-positive patches (SHAP expected
    gradients), so the demo opens with maps on the slide; the other methods are one click away."""
    widget.which.value = "top N"
    widget.top_n.value = n
    widget.top_column.reset_choices()
    widget.top_column.value = "prob_dab_positive"
    widget.n_samples.value = 200
    widget.run()
    return widget


def load_demo_data(directory=None, progress=None, cancelled=None):
    """The demo's slide, patch table and UMAP of its embeddings: (slide, table, (es, coords)).
    ``progress(fraction, message)`` hears every step (from the calling thread); ``cancelled()``
    stops the work between steps and inside the UMAP with :class:`Cancelled`."""
    from ._demo import demo_umap, load_demo
    from .errors import Cancelled

    done = [0.0]

    def say(fraction: float, message: str) -> None:
        if cancelled is not None and cancelled():
            raise Cancelled("demo loading cancelled")
        done[0] = max(done[0], fraction)
        if progress is not None:
            progress(done[0], message)

    # Building the data, the model's predictions and embeddings: steps of unknown length, each
    # moves the bar a little; the UMAP, whose stages are known, fills the rest.
    def step(message: str) -> None:
        say(min(done[0] + 0.08, UMAP_START), message)

    say(0.0, "opening the demo slide and patches")
    slide, table = load_demo(directory, step=step)
    embedding = demo_umap(
        table,
        directory=directory,
        step=step,
        progress=lambda f, stage: say(UMAP_START + (1 - UMAP_START) * f, f"UMAP: {stage}"),
        cancelled=cancelled,
    )
    say(1.0, "showing the slide, its patches and the UMAP")
    return slide, table, embedding


UMAP_START = 0.4  # the share of the loading bar before the UMAP begins


def load_demo_into(viewer, widgets: dict, directory=None, on_progress=None, on_loaded=None):
    """Loads the demo data off the GUI thread into an open viewer whose docks are ``widgets``:
    a napari progress bar (the activity dock) and a line on the canvas say each step; when done,
    the layers are added and ``on_loaded(widgets)`` runs. ``on_progress(fraction, message)``
    also hears the steps, on the GUI thread. Returns the worker (quit() cancels it)."""
    from napari.qt.threading import create_worker
    from napari.utils import progress as napari_progress
    from napari.utils.notifications import show_error
    from qtpy.QtWidgets import QApplication

    from ._widgets._jobs import _ProgressSignal
    from .errors import Cancelled

    bar = napari_progress(total=100, desc="Loading the demo")
    overlay = text_overlay(viewer)
    overlay.visible = True
    overlay.text = "Loading the demo…"
    signal = _ProgressSignal()
    cancel = []

    def show(values) -> None:
        fraction, message = values
        # on_progress first: napari's bar processes Qt events while it redraws, so the next
        # step may be shown from inside this call.
        if on_progress is not None:
            on_progress(fraction, message)
        overlay.text = f"Loading the demo: {message}"
        bar.n = round(100 * fraction)
        bar.set_description(f"Demo: {message}")

    def finish() -> None:
        bar.close()
        overlay.visible = False

    def loaded(result) -> None:
        finish()
        slide, table, embedding = result
        populate_demo_viewer(viewer, slide, table, embedding, widgets, directory)
        if on_loaded is not None:
            on_loaded(widgets)

    def failed(error: Exception) -> None:
        finish()
        if not isinstance(error, Cancelled):
            show_error(f"The demo could not load: {error}")

    signal.changed.connect(show)
    worker = create_worker(
        load_demo_data,
        directory,
        lambda fraction, message: signal.changed.emit((fraction, message)),
        lambda: bool(cancel) or worker.abort_requested,
        _connect={"returned": loaded, "errored": failed},
        _start_thread=False,
    )
    worker._demo_signal = signal  # kept alive while the worker runs
    # Quitting the application while loading stops the work at its next step.
    QApplication.instance().aboutToQuit.connect(lambda: cancel.append(True))
    worker.start()
    return worker


def text_overlay(viewer):
    """The canvas's text overlay (napari >= 0.9 keeps it under ``viewer.canvas.overlays``)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    return overlays.text if overlays is not None else viewer.text_overlay


def open_demo_viewer(directory=None, screenshot: str | None = None, on_progress=None) -> int:
    """The demo window at once, the data loading into it with progress (``on_progress(fraction,
    message)`` hears it too), then SHAP maps on the most DAB-positive patches."""
    import napari

    viewer = napari.Viewer(title="napari-pathviz demo")
    widgets = dock_pathviz_widgets(viewer)
    started: list = []
    load_demo_into(
        viewer,
        widgets,
        directory,
        on_progress=on_progress,
        on_loaded=lambda w: started.append(explain_top_patches(w["Attributions"])),
    )
    if screenshot:
        return _save_screenshot(viewer, started, screenshot)
    napari.run()
    return 0


def _save_screenshot(viewer, started: list, path: str) -> int:
    """Waits for the loading and the first attributions, then grabs the whole window."""
    import time

    from qtpy.QtWidgets import QApplication

    viewer.window._qt_window.resize(1440, 900)  # a laptop screen: all docks fit (issue 11)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not (started and started[0].run_button.enabled):
        QApplication.processEvents()  # the loading and the attributions run in threads
        time.sleep(0.05)
    for _ in range(5):  # let Qt lay out the dock widgets before grabbing the window
        QApplication.processEvents()
    viewer.screenshot(path, canvas_only=False, flash=False)
    print(path)
    viewer.close()
    return 0
