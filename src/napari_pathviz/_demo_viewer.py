"""The demo in napari: the demo slide, its patches and the plugin's dock widgets."""

from __future__ import annotations

from ._layers import patches_layer_data, slide_layer_data

PLUGIN = "napari-pathviz"
DOCK_WIDGETS = ("Slide & patches", "Model inference", "Attributions", "Embedding explorer")
EXPLORER = "Embedding explorer"
RIGHT_COLUMN = ("Slide & patches", "Model inference", "Attributions")  # one tab group


def dock_pathviz_widgets(viewer) -> dict:
    """The plugin's dock widgets (by name), laid out for a 1440 x 900 screen: Slide & patches,
    Model inference and Attributions (and the Cohort explorer and QuPath annotations when
    open) share one tab group on the right, the Embedding explorer has the left column to
    itself, full height, so its scatter is about square; the slide canvas keeps the middle
    half of the window. Docks already open are moved there (Plugins > PathViz > Workbench)."""
    from qtpy.QtWidgets import QDockWidget

    from ._widgets._dock_layout import is_pathviz_dock, three_columns

    docks = {name: viewer.window.add_plugin_dock_widget(PLUGIN, name) for name in DOCK_WIDGETS}
    explorer = docks[EXPLORER][0]
    right = [docks[name][0] for name in RIGHT_COLUMN]
    window = viewer.window._qt_window
    right += [  # the other PathViz docks open: Cohort explorer, QuPath annotations
        dock
        for dock in window.findChildren(QDockWidget)
        if is_pathviz_dock(dock) and not dock.isHidden() and dock not in (explorer, *right)
    ]
    qt_viewer = viewer.window._qt_viewer
    three_columns(window, explorer, right, [qt_viewer.dockLayerControls, qt_viewer.dockLayerList])
    widgets = {name: widget for name, (_dock, widget) in docks.items()}
    widgets["Slide & patches"].show_ampersand_in_tab()
    return widgets


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
    show_activity(viewer)  # napari's bar, open from the start, not behind the status bar button
    overlay = text_overlay(viewer)
    overlay.visible = True
    overlay.text = "Loading the demo…"
    say_in_explorer(widgets, 0.0, "loading the demo…")
    viewer.status = "Loading the demo…"
    signal = _ProgressSignal()
    cancel = []

    def show(values) -> None:
        fraction, message = values
        # on_progress first: napari's bar processes Qt events while it redraws, so the next
        # step may be shown from inside this call.
        if on_progress is not None:
            on_progress(fraction, message)
        overlay.text = f"Loading the demo: {message}"
        say_in_explorer(widgets, fraction, f"loading the demo: {message}")
        viewer.status = f"Loading the demo ({round(100 * fraction)}%): {message}"
        bar.n = round(100 * fraction)
        bar.set_description(f"Demo: {message}")

    def finish() -> None:
        bar.close()
        overlay.visible = False
        show_activity(viewer, False)  # empty now: it would hide the canvas' corner

    def loaded(result) -> None:
        finish()
        slide, table, embedding = result
        populate_demo_viewer(viewer, slide, table, embedding, widgets, directory)
        if on_loaded is not None:
            on_loaded(widgets)

    def failed(error: Exception) -> None:
        finish()
        if isinstance(error, Cancelled):
            say_in_explorer(widgets, 0.0, "demo loading cancelled")
        else:
            say_in_explorer(widgets, 0.0, f"the demo could not load: {error}")
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


def show_activity(viewer, visible: bool = True) -> None:
    """Opens (closes) napari's activity dock (its progress bars) in the canvas' corner."""
    try:
        toggle = getattr(viewer.window._qt_window.statusBar(), "_toggle_activity_dock", None)
        if toggle is not None:  # napari >= 0.5
            toggle(visible)
    except (AttributeError, RuntimeError):
        pass  # the viewer was closed while the demo loaded


def say_in_explorer(widgets: dict, fraction: float, message: str) -> None:
    """The demo's loading in the Embedding explorer's bar and status (its UMAP is a part)."""
    explorer = widgets.get(EXPLORER)
    try:
        if explorer is not None:
            explorer.progress.value = round(100 * fraction)
            explorer.status.value = message
    except RuntimeError:
        pass  # the viewer was closed while the demo loaded


def text_overlay(viewer):
    """The canvas's text overlay (napari >= 0.9 keeps it under ``viewer.canvas.overlays``)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    return overlays.text if overlays is not None else viewer.text_overlay


def open_demo_viewer(directory=None, screenshot: str | None = None, on_progress=None) -> int:
    """The demo window at once, the data loading into it with progress (``on_progress(fraction,
    message)`` hears it too), then SHAP maps on the most DAB-positive patches."""
    import napari

    viewer, started, _worker = start_demo_window(
        directory, on_progress, size=SCREENSHOT_SIZE if screenshot else None
    )
    if screenshot:
        return _save_screenshot(viewer, started, screenshot)
    napari.run()
    return 0


SCREENSHOT_SIZE = (1440, 900)  # a laptop screen: all docks fit (issue 11)


def start_demo_window(
    directory=None, on_progress=None, size=None, available=None, make_viewer=None
):
    """The demo's viewer, sized to the screen's available geometry (or ``available``, a QRect;
    or to ``size``), its docks laid out, the data loading with progress shown from the start.
    Returns (viewer, started, worker): ``started`` receives the Attributions widget once its
    first run has begun. ``make_viewer`` makes the viewer (napari.Viewer)."""
    import napari

    from ._widgets._dock_layout import fit_to_screen

    # No welcome screen: it would hide the canvas, and with it the loading line and napari's
    # activity dock, for the minute a cold start takes.
    make_viewer = make_viewer or napari.Viewer
    viewer = make_viewer(title="napari-pathviz demo", show_welcome_screen=False)
    window = viewer.window._qt_window
    if size is None:
        fit_to_screen(window, available)
    else:
        window.resize(*size)
    widgets = dock_pathviz_widgets(viewer)
    started: list = []
    worker = load_demo_into(
        viewer,
        widgets,
        directory,
        on_progress=on_progress,
        on_loaded=lambda w: started.append(explain_top_patches(w["Attributions"])),
    )
    return viewer, started, worker


def _save_screenshot(viewer, started: list, path: str) -> int:
    """Waits for the loading and the first attributions, then grabs the whole window."""
    import time

    from qtpy.QtWidgets import QApplication

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
