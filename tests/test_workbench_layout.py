"""The workbench fits a 1440 x 900 laptop screen with all four dock widgets open, docked as the
demo docks them: the window stays within the screen, the slide canvas keeps half of it, and every
action button can be seen and clicked without scrolling the main window."""

from __future__ import annotations

import pytest

napari = pytest.importorskip("napari")

from napari_pathviz._demo_viewer import DOCK_WIDGETS, dock_pathviz_widgets  # noqa: E402

SCREEN = (1440, 900)


def _settle(qtbot, ms: int = 200) -> None:
    from qtpy.QtWidgets import QApplication

    qtbot.wait(ms)
    QApplication.processEvents()


def _action_buttons(widget) -> dict:
    """The buttons a user can act with now, by text: all but those inside a closed section
    (whose title button, there to open it, is itself one of them)."""
    from qtpy.QtWidgets import QPushButton
    from superqt import QCollapsible

    def in_closed_section(button) -> bool:
        parent = button.parent()
        while parent is not None and parent is not widget:
            if isinstance(parent, QCollapsible) and not parent.isExpanded():
                return button is not parent.toggleButton()
            parent = parent.parent()
        return False

    return {
        button.text(): button
        for button in widget.findChildren(QPushButton)
        if button.isVisibleTo(widget) and not in_closed_section(button)
    }


def _fully_shown(button, window) -> bool:
    """On screen, not clipped by a scroll area or the window: the whole button is visible."""
    from qtpy.QtCore import QPoint, QRect

    if not button.isVisible():
        return False
    region = button.visibleRegion()
    inside = QRect(button.mapTo(window, QPoint(0, 0)), button.size())
    return (
        region.boundingRect().size() == button.size()
        and window.rect().contains(inside)
        and inside.bottom() < window.height()
    )


def _docked(make_napari_viewer, qtbot):
    """A viewer at laptop size with the four widgets docked as the demo docks them (a helper,
    not a fixture: a fixture's value outlives the viewer napari checks for leaks)."""
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(*SCREEN)
    widgets = dock_pathviz_widgets(viewer)
    # With content: File > Open Sample (the shown explorer runs the demo embeddings' UMAP, so
    # the scatter's legend takes its room), the demo model in both model fields.
    viewer.open_sample("napari-pathviz", "demo")
    done = f"UMAP of {len(viewer.layers[-1].data)} patches"
    explorer = widgets["Embedding explorer"]
    qtbot.waitUntil(lambda: explorer.status.value == done, timeout=300_000)
    for name in ("Model inference", "Attributions"):
        widgets[name].form.prefill_demo()
    _settle(qtbot)
    window.resize(*SCREEN)  # what a laptop's window manager would allow
    _settle(qtbot)
    return viewer, window, widgets


def test_all_docks_fit_a_laptop_screen(make_napari_viewer, qtbot):
    viewer, window, widgets = _docked(make_napari_viewer, qtbot)
    assert set(widgets) == set(DOCK_WIDGETS)
    assert window.width() <= SCREEN[0] and window.height() <= SCREEN[1], window.size()
    # Nothing in the docks forces the window to grow past the screen.
    minimum = window.minimumSizeHint()
    assert minimum.width() <= SCREEN[0] and minimum.height() <= SCREEN[1], minimum
    canvas = viewer.window._qt_viewer.canvas.native
    assert canvas.width() >= window.width() / 2, (canvas.width(), window.width())
    assert canvas.height() >= window.height() * 0.8, (canvas.height(), window.height())
    # The explorer's scatter, full height in the left column, is big enough to read a UMAP in.
    scatter = widgets["Embedding explorer"].scatter.native
    assert scatter.isVisible()
    assert scatter.height() >= 300 and scatter.width() >= 280, scatter.size()


EXPECTED_BUTTONS = {
    "Slide & patches": {"Open slide", "Load patches", "Generate tissue grid", "Cancel"},
    "Model inference": {"Run model", "Cancel"},
    "Attributions": {"Explain", "Cancel", "Show gallery", "Export gallery"},
    "Embedding explorer": {"Run UMAP", "Cancel", "Centre"},
}


def test_every_action_button_is_visible_without_scrolling(make_napari_viewer, qtbot):
    viewer, window, widgets = _docked(make_napari_viewer, qtbot)
    for name in DOCK_WIDGETS:
        widget = widgets[name]
        native = widget.native if hasattr(widget, "native") else widget
        native.parent().raise_()  # its dock's tab in front, as a click on the tab does
        _settle(qtbot, 50)
        buttons = _action_buttons(native)
        assert len(buttons) >= len(EXPECTED_BUTTONS[name]) + 2  # + file pickers, sections
        assert EXPECTED_BUTTONS[name] <= set(buttons), (name, sorted(buttons))
        for text, button in buttons.items():
            assert _fully_shown(button, window), (name, text, button.visibleRegion().boundingRect())


def test_the_slide_and_patches_tab_shows_its_ampersand(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QTabBar

    _viewer, window, _widgets = _docked(make_napari_viewer, qtbot)
    tabs = [bar.tabText(i) for bar in window.findChildren(QTabBar) for i in range(bar.count())]
    # Qt shows "&&" as "&"; a single "&" would be eaten as a shortcut marker.
    assert any(text.startswith("Slide && patches") for text in tabs), tabs


def test_fields_say_what_none_and_zero_mean_and_paths_have_pickers(make_napari_viewer):
    from magicgui.widgets import FileEdit

    viewer = make_napari_viewer()
    # Opened as napari's Plugins menu opens them, each with its own proxy of the viewer.
    loader, explorer, inference, attributions = (
        viewer.window.add_plugin_dock_widget("napari-pathviz", name)[1]
        for name in ("Slide & patches", "Embedding explorer", "Model inference", "Attributions")
    )
    # "none" and 0 say what they mean where they are shown, not only in a tooltip.
    output = attributions.output
    assert output.value == "none" and output.native.currentText() == "none: the logit"
    assert "none = the raw model output" in output.tooltip
    for spin, meaning in (
        (attributions.batch_size, "0 = auto"),
        (inference.form.input_size, "0 = auto"),
        (loader.patch_size, "0 = auto"),
        (explorer.pca, "0 = off"),
        (explorer.seed, "-1 = none"),
        (attributions.smoothing, "0 = none"),
    ):
        assert spin.label.endswith(f"({meaning})"), spin.label
    smoothing = attributions.smoothing.native  # a QDoubleSpinBox shows it in the box too
    assert smoothing.lineEdit().text() == "0 = none"
    attributions.smoothing.value = 0.5
    assert smoothing.lineEdit().text() == "0.50"
    # Every path field has a file dialog button.
    fields = {
        "slide": loader.slide_path,
        "table": loader.table_path,
        "model": inference.form.model_path,
        "attribution model": attributions.form.model_path,
        "background": attributions.background_file,
        "gallery": attributions.gallery_path,
        "store": attributions.store_path,
        "embeddings": explorer.embeddings_path,
        "keys": explorer.keys_path,
        "coordinates": explorer.coords_path,
        "export": explorer.export_path,
    }
    for name, field in fields.items():
        assert isinstance(field, FileEdit), name
    assert attributions.store_path.mode.value == "d" and explorer.export_path.mode.value == "w"


# --- opened from the Plugins menu, in any order ------------------------------------------------

MENU_NAMES = (  # the display names in napari.yaml, as the Plugins menu lists them
    "Slide & patches",
    "Embedding explorer",
    "Model inference",
    "Attributions",
    "Cohort explorer",
    "QuPath annotations",
)
ORDERS = {
    "menu order": MENU_NAMES,
    "reversed": MENU_NAMES[::-1],
    "tallest first": (
        "Cohort explorer",
        "Attributions",
        "Slide & patches",
        "QuPath annotations",
        "Embedding explorer",
        "Model inference",
    ),
}


def _laptop_screen(window):
    """The part of the screen a 1440 x 900 laptop shows, the window at its top left corner."""
    from qtpy.QtCore import QRect, QSize

    return QRect(window.frameGeometry().topLeft(), QSize(*SCREEN))


def _global_rect(widget):
    from qtpy.QtCore import QPoint, QRect

    return QRect(widget.mapToGlobal(QPoint(0, 0)), widget.size())


def _in_front(dock, window) -> bool:
    """A shown dock, and the front tab of its tab group (Qt moves the others off the window)."""
    return dock.isVisible() and window.rect().intersects(dock.geometry())


def _assert_fits(viewer, window, docks: dict) -> None:
    from qtpy.QtWidgets import QPushButton

    frame = window.frameGeometry()
    assert frame.width() <= SCREEN[0] and frame.height() <= SCREEN[1], frame
    canvas = viewer.window._qt_viewer.canvas.native
    # Half the width, whichever docks are open (next to napari's 320-px layer controls for
    # points); nearly all the height.
    assert canvas.width() >= window.width() / 2, (canvas.width(), window.width())
    assert canvas.height() >= window.height() * 0.9, (canvas.height(), window.height())
    screen = _laptop_screen(window)
    front = [name for name, (dock, _widget) in docks.items() if _in_front(dock, window)]
    assert len(front) == 1, front  # one tab group: one PathViz dock in front
    for name in front:
        widget = docks[name][1]
        native = widget.native if hasattr(widget, "native") else widget
        buttons = _action_buttons(native)
        assert buttons, name
        for text, button in buttons.items():
            shown = button.visibleRegion().boundingRect()
            # Visible, whole: no scroll bar or dock edge covers any of it.
            assert button.isVisible() and shown.size() == button.size(), (name, text, shown)
            assert screen.contains(_global_rect(button)), (name, text, _global_rect(button))
    # napari's own buttons (layer list, viewer buttons) stay on the screen too.
    pathviz = [docks[name][0] for name in docks]
    for button in window.findChildren(QPushButton):
        if button.isVisible() and not any(dock.isAncestorOf(button) for dock in pathviz):
            assert screen.contains(_global_rect(button)), (button.text(), _global_rect(button))


@pytest.mark.parametrize("order", list(ORDERS))
def test_plugins_menu_docks_fit_a_laptop_screen_in_any_order(
    make_napari_viewer, qtbot, pathflowai_project, order
):
    """Each widget opened as the Plugins menu opens it: the window never grows past 1440 x 900,
    each new dock joins the PathViz tab group in front, every button of the front tab is on
    the screen (napari's add_dock_widget stacks them: 1827 px tall for the six)."""
    from qtpy.QtWidgets import QTabBar

    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(*SCREEN)
    # A slide and its patches: napari's layer controls for points are wider than empty ones.
    viewer.open(pathflowai_project["zarr"], plugin="napari-pathviz")
    viewer.open(pathflowai_project["db"], plugin="napari-pathviz")
    _settle(qtbot)
    docks: dict = {}
    for name in ORDERS[order]:
        docks[name] = viewer.window.add_plugin_dock_widget("napari-pathviz", name)
        _settle(qtbot, 100)
        _assert_fits(viewer, window, docks)
        assert _in_front(docks[name][0], window), name  # the dock just opened is shown
    # Six tabs in one column are elided: each says its whole name as a tooltip.
    tips = {bar.tabToolTip(i) for bar in window.findChildren(QTabBar) for i in range(bar.count())}
    assert set(ORDERS[order]) <= tips, tips
    groups = {name: set(window.tabifiedDockWidgets(dock)) for name, (dock, _w) in docks.items()}
    for name in docks:
        others = {other for other_name, (other, _w) in docks.items() if other_name != name}
        assert groups[name] == others, name  # all six in one tab group
    # Each tab in front in turn: every button of every widget can be reached on the screen.
    for dock, _widget in docks.values():
        dock.raise_()
        _settle(qtbot, 50)
        _assert_fits(viewer, window, docks)


# --- Plugins > PathViz > Workbench: the demo's three columns on the viewer's own data -----------


def _area(window, dock) -> str:
    from qtpy.QtCore import Qt

    areas = {
        Qt.DockWidgetArea.LeftDockWidgetArea: "left",
        Qt.DockWidgetArea.RightDockWidgetArea: "right",
    }
    return areas.get(window.dockWidgetArea(dock), "elsewhere")


def _assert_three_columns(viewer, window, docks: dict, canvas_width: float = 0.5) -> None:
    qt_viewer = viewer.window._qt_viewer
    explorer = docks["Embedding explorer"][0]
    assert _area(window, explorer) == "left" and _in_front(explorer, window)
    assert {qt_viewer.dockLayerList, qt_viewer.dockLayerControls} <= set(
        window.tabifiedDockWidgets(explorer)
    )
    right = [dock for name, (dock, _w) in docks.items() if name != "Embedding explorer"]
    for dock in right:
        assert _area(window, dock) == "right", dock.windowTitle()
        assert set(window.tabifiedDockWidgets(dock)) == set(right) - {dock}, dock.windowTitle()
    assert _in_front(docks["Slide & patches"][0], window)
    frame = window.frameGeometry()
    assert frame.width() <= SCREEN[0] and frame.height() <= SCREEN[1], frame
    canvas = qt_viewer.canvas.native
    left = canvas.mapTo(window, canvas.rect().topLeft()).x()
    assert explorer.geometry().right() < left  # the canvas between the two columns
    assert left + canvas.width() <= docks["Slide & patches"][0].geometry().left()
    assert canvas.width() >= window.width() * canvas_width, (canvas.width(), window.width())
    assert canvas.height() >= window.height() * 0.9, (canvas.height(), window.height())


def test_workbench_entry_lays_out_the_demo_columns_on_the_viewers_data(
    make_napari_viewer, qtbot, pathflowai_project
):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(*SCREEN)
    viewer.open(pathflowai_project["zarr"], plugin="napari-pathviz")
    viewer.open(pathflowai_project["db"], plugin="napari-pathviz")
    patches = viewer.layers[-1].name
    _settle(qtbot)
    workbench_dock, _workbench = viewer.window.add_plugin_dock_widget("napari-pathviz", "Workbench")
    _settle(qtbot)
    docks = {  # open already: add_plugin_dock_widget hands them back as they are
        name: viewer.window.add_plugin_dock_widget("napari-pathviz", name)
        for name in ("Slide & patches", "Model inference", "Attributions", "Embedding explorer")
    }
    _assert_three_columns(viewer, window, docks)
    assert not workbench_dock.isVisible()  # it only lays the docks out
    # The widgets work on the data the viewer holds.
    for name, (_dock, widget) in docks.items():
        assert widget.patches_layer().name == patches, name
    # Docks opened later, and one torn off, join the columns when the entry is chosen
    # again (napari's menu shows the hidden Workbench dock).
    for name in ("Cohort explorer", "QuPath annotations"):
        docks[name] = viewer.window.add_plugin_dock_widget("napari-pathviz", name)
        _settle(qtbot, 100)
    attributions = docks["Attributions"][0]
    attributions.setFloating(True)  # torn off the window
    _settle(qtbot)
    assert attributions.isFloating()
    workbench_dock.setVisible(True)
    _settle(qtbot)
    # With the Cohort explorer too, the canvas keeps half the width and its full height.
    _assert_three_columns(viewer, window, docks)


# --- interactive `pathviz demo`: the screen's size, progress from the first moment -------------


def test_demo_window_fills_the_screen_and_shows_progress_from_the_start(make_napari_viewer, qtbot):
    """`pathviz demo` opened at 1089 x 1063 on a 1600 x 1000 screen (its bottom off-screen),
    behind napari's welcome screen, which hid the loading line for the minute a cold start
    takes; the explorer said 0% and the status bar "Ready"."""
    from functools import partial

    from qtpy.QtCore import QRect
    from qtpy.QtWidgets import QLabel

    from napari_pathviz._demo_viewer import start_demo_window, text_overlay
    from napari_pathviz._widgets._dock_layout import FRAMED_AFTER_MS, fit_to_screen

    viewer, _started, worker = start_demo_window(make_viewer=partial(make_napari_viewer, show=True))
    finished = []
    worker.finished.connect(lambda: finished.append(True))
    window = viewer.window._qt_window
    qtbot.wait(100)
    available = window.screen().availableGeometry()  # Xvfb's whole screen: no task bar
    assert window.frameGeometry() == available, (window.frameGeometry(), available)
    # From the start: the canvas (no welcome screen over it) with its loading line, napari's
    # activity dock with the demo's bar, the explorer's status and the status bar.
    qt_viewer = viewer.window._qt_viewer
    assert not qt_viewer._welcome_widget.isVisible() and qt_viewer.canvas.native.isVisible()
    overlay = text_overlay(viewer)
    assert overlay.visible and overlay.text.startswith("Loading the demo")
    activity = window._activity_dialog
    assert activity.isVisible()
    bars = [label.text() for label in activity.findChildren(QLabel) if label.isVisible()]
    assert any(text.startswith(("Loading the demo", "Demo: ")) for text in bars), bars
    explorer = viewer.window.dock_widgets["Embedding explorer (napari-pathviz)"]
    assert explorer.status.value.startswith("loading the demo"), explorer.status.value
    assert viewer.status.startswith("Loading the demo"), viewer.status
    # The steps move the bars on.
    qtbot.waitUntil(lambda: explorer.progress.value > 0, timeout=300_000)
    assert viewer.status.startswith("Loading the demo (")
    worker.quit()  # cancelled at its next step: the bar and the loading line go
    qtbot.waitUntil(lambda: bool(finished), timeout=300_000)
    qtbot.wait(50)
    assert not overlay.visible and not activity.isVisible()
    # Cancelled, unless the (cached) data had all loaded first.
    assert explorer.status.value == "demo loading cancelled" or len(viewer.layers) == 2
    # A smaller screen (a laptop's, less its task bar): the window takes it, no more.
    laptop = QRect(0, 0, 1440, 860)
    fit_to_screen(window, laptop)
    qtbot.wait(50)
    assert window.frameGeometry() == laptop, window.frameGeometry()
    qtbot.wait(FRAMED_AFTER_MS + 100)  # fitted again once a window manager has framed it
    assert window.frameGeometry() == laptop, window.frameGeometry()


LONG_WARNING = (  # as Attributions reports incomplete maps: 230 characters
    "gradient: 8 patches, completeness error median 0.053 (no CUDA GPU: ran on the CPU); "
    "WARNING: 4 of 8 maps incomplete: their attributions miss f(x) - E f(background) by more "
    "than 5% (worst relative error 0.16)"
)


def test_a_long_status_wraps_without_growing_the_window(make_napari_viewer, qtbot):
    """A wrapping status line asked for the height of its text at 40 px wide (530 px for this
    warning): after an Explain run the demo window grew to 979 px."""
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(*SCREEN)
    docks = {
        name: viewer.window.add_plugin_dock_widget("napari-pathviz", name) for name in MENU_NAMES
    }
    _settle(qtbot)
    for _dock, widget in docks.values():
        widget.status.value = LONG_WARNING
    _settle(qtbot)
    for dock, widget in docks.values():
        dock.raise_()
        _settle(qtbot, 50)
        _assert_fits(viewer, window, docks)
        status = widget.status.native
        assert status.isVisible() and status.height() >= status.heightForWidth(status.width())
