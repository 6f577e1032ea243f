"""The demo in napari: the demo slide, its patches and the plugin's dock widgets."""

from __future__ import annotations

from ._layers import patches_layer_data, slide_layer_data

PLUGIN = "napari-pathviz"
DOCK_WIDGETS = ("Slide & patches",)


def populate_demo_viewer(viewer, slide, table) -> None:
    from napari.layers import Layer

    for data, kwargs, kind in (
        slide_layer_data(slide),
        patches_layer_data(table, color_by="annotation"),
    ):
        viewer.add_layer(Layer.create(data, kwargs, kind))
    for name in DOCK_WIDGETS:
        viewer.window.add_plugin_dock_widget(PLUGIN, name)
    viewer.reset_view()


def open_demo_viewer(slide, table, screenshot: str | None = None) -> int:
    import napari

    viewer = napari.Viewer(title="napari-pathviz demo")
    populate_demo_viewer(viewer, slide, table)
    if screenshot:
        from qtpy.QtWidgets import QApplication

        viewer.window._qt_window.resize(1500, 950)
        for _ in range(5):  # let Qt lay out the dock widgets before grabbing the window
            QApplication.processEvents()
        viewer.screenshot(screenshot, canvas_only=False, flash=False)
        print(screenshot)
        viewer.close()
        return 0
    napari.run()
    return 0
