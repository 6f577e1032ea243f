"""The demo in napari: the demo slide, its patches and the plugin's dock widgets."""

from __future__ import annotations

from ._layers import patches_layer_data, slide_layer_data

PLUGIN = "napari-pathviz"
DOCK_WIDGETS = ("Slide & patches", "Model inference", "Attributions", "Embedding explorer")
TABBED = ("Model inference", "Attributions")  # share a tab group with the widget before them


def dock_pathviz_widgets(viewer) -> dict:
    """The plugin's dock widgets (by name), laid out for a 1440 x 900 screen: Slide & patches,
    Model inference and Attributions share one tab group above the Embedding explorer, so the
    scatter and the Explain button show together and the slide canvas keeps half the window."""
    docks = {
        name: viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=name in TABBED)
        for name in DOCK_WIDGETS
    }
    docks[DOCK_WIDGETS[0]][0].raise_()  # the tab to start from: open a slide
    widgets = {name: widget for name, (_dock, widget) in docks.items()}
    widgets["Slide & patches"].show_ampersand_in_tab()
    _keep_sharing_height(viewer, [docks[name][0] for name in DOCK_WIDGETS])
    return widgets


def _keep_sharing_height(viewer, docks) -> None:
    """Shares the height now and once Qt has laid the docks out (it may undo the first)."""
    from qtpy.QtCore import QTimer

    _share_height(viewer, docks)
    QTimer.singleShot(0, lambda: _share_height(viewer, docks))


def _share_height(viewer, docks) -> None:
    """The tab group as tall as its tallest widget's content with closed sections, the
    explorer (the last dock) the rest, for its scatter."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QScrollArea

    def content_height(dock) -> int:
        inner = dock.widget()
        inner = inner.widget() if isinstance(inner, QScrollArea) else inner
        return inner.sizeHint().height()

    try:
        window = viewer.window._qt_window
        tabs = max(content_height(dock) for dock in docks[:-1]) + 30  # + the title bar
        window.resizeDocks([docks[0], docks[-1]], [tabs, window.height()], Qt.Orientation.Vertical)
    except (RuntimeError, AttributeError):
        pass  # the viewer was closed first


def populate_demo_viewer(viewer, slide, table, embedding=None) -> dict:
    """Slide and patches as layers, the plugin's dock widgets (returned by name), and, given
    ``embedding`` = (EmbeddingSet, coords), the embedding explorer filled with it."""
    from napari.layers import Layer

    from ._demo import demo_embeddings_path

    layers = [
        viewer.add_layer(Layer.create(data, kwargs, kind))
        for data, kwargs, kind in (
            slide_layer_data(slide),
            patches_layer_data(table, color_by="annotation"),
        )
    ]
    widgets = dock_pathviz_widgets(viewer)
    for name in ("Model inference", "Attributions"):
        widgets[name].form.prefill_demo()  # the demo model, ready to run
    explorer = widgets["Embedding explorer"]
    explorer.embeddings_path.value = str(demo_embeddings_path())
    if embedding is not None:
        es, coords = embedding
        explorer.write_coords_to_layer(layers[1], es.table.df, coords)
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


def open_demo_viewer(slide, table, screenshot: str | None = None) -> int:
    import sys

    import napari

    from ._demo import demo_umap

    print(
        "pathviz demo: UMAP of the demo embeddings (the first run compiles numba kernels, "
        "~20 s; later runs read the cache)",
        file=sys.stderr,
    )
    embedding = demo_umap(table)
    viewer = napari.Viewer(title="napari-pathviz demo")
    widgets = populate_demo_viewer(viewer, slide, table, embedding)
    attributions = explain_top_patches(widgets["Attributions"])
    if screenshot:
        import time

        from qtpy.QtWidgets import QApplication

        viewer.window._qt_window.resize(1500, 950)
        deadline = time.monotonic() + 120
        while not attributions.run_button.enabled and time.monotonic() < deadline:
            QApplication.processEvents()  # the attributions are computed in a thread
            time.sleep(0.05)
        for _ in range(5):  # let Qt lay out the dock widgets before grabbing the window
            QApplication.processEvents()
        viewer.screenshot(screenshot, canvas_only=False, flash=False)
        print(screenshot)
        viewer.close()
        return 0
    napari.run()
    return 0
