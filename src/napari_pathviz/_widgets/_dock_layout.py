"""PathViz docks share one tab group, so that opening them all from napari's Plugins menu keeps
the window on a laptop screen.

napari's Plugins menu docks every plugin widget on the right, one under the other, and the main
window grows to the sum of their heights (1827 px for the six PathViz widgets): buttons end up
below the screen. Qt lays tabified docks out at the height of the tallest one instead. Each
PathViz widget calls :func:`join_pathviz_tabs` once; when its dock is first shown, it joins a
PathViz dock already open in the same dock area as a tab, in front.
"""

from __future__ import annotations

from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import QDockWidget, QMainWindow, QWidget

# A Qt property marking a PathViz widget; a dock whose widget has it is a PathViz dock.
PATHVIZ_PROPERTY = "pathviz_dock_widget"


def join_pathviz_tabs(native: QWidget) -> None:
    """Marks ``native`` (a PathViz widget's Qt widget) and, once its dock is first shown,
    tabifies that dock with a PathViz dock open in the same area. The hook lives as long as
    the widget (it is the widget's child)."""
    native.setProperty(PATHVIZ_PROPERTY, True)
    native.installEventFilter(_JoinTabsOnShow(native))


class _JoinTabsOnShow(QObject):
    """Event filter on the widget and its dock. napari adds the dock to the main window; Qt
    lays the window out (growing it by the new dock's height) and then shows the dock, on the
    next turns of the event loop. So the window's size is noted when the dock enters it, and
    given back once the dock has joined a tab group on its first showing."""

    def __init__(self, native: QWidget):
        super().__init__(native)
        self._native = native
        self._dock: QDockWidget | None = None
        self._size_before = None

    def eventFilter(self, watched, event) -> bool:
        kind = event.type()
        if watched is self._native and kind == QEvent.Type.ParentChange:
            dock = dock_of(self._native)
            if dock is not None and dock is not self._dock:
                self._dock = dock
                dock.installEventFilter(self)
        elif watched is self._dock and kind == QEvent.Type.ParentChange:
            window = self._dock.parentWidget()
            if isinstance(window, QMainWindow):
                self._size_before = window.size()
        elif watched is self._native and kind == QEvent.Type.Show:
            self._first_shown()
        return False

    def _first_shown(self) -> None:
        # The first showing only: later the user decides where the dock goes.
        self._native.removeEventFilter(self)
        if self._dock is not None:
            self._dock.removeEventFilter(self)
        if tabify_with_pathviz_docks(self._native):
            give_back_height(self._dock.parentWidget(), self._size_before)


def give_back_height(window: QMainWindow, size) -> None:
    """The window's height before the dock came (Qt keeps it above the window's minimum)."""
    if size is not None and window.height() > size.height():
        window.layout().activate()  # the minimum as tabbed, not the one as stacked
        window.resize(window.width(), size.height())


def is_pathviz_dock(dock: QDockWidget) -> bool:
    inner = dock.widget()
    return inner is not None and bool(inner.property(PATHVIZ_PROPERTY))


def dock_of(widget: QWidget) -> QDockWidget | None:
    """The dock widget holding ``widget``, None when it is not docked."""
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    return parent


def tabify_with_pathviz_docks(widget: QWidget) -> bool:
    """Puts the dock of ``widget`` into the tab group of another visible PathViz dock in the
    same area of the main window (not floating), in front. False when there is none, or the
    dock is floating or already in a tab group."""
    dock = dock_of(widget)
    window = dock.parentWidget() if dock is not None else None
    if not isinstance(window, QMainWindow) or dock.isFloating():
        return False
    if window.tabifiedDockWidgets(dock):
        return False  # napari (tabify=True) or the user put it in a group already
    area = window.dockWidgetArea(dock)
    partners = [
        other
        for other in window.findChildren(QDockWidget)
        if other is not dock
        and is_pathviz_dock(other)
        and other.isVisible()
        and not other.isFloating()
        and window.dockWidgetArea(other) == area
    ]
    if not partners:
        return False
    window.tabifyDockWidget(partners[0], dock)
    for member in (dock, *partners):
        _short_tab_title(member)
    dock.show()
    dock.raise_()  # the dock just opened is the tab in front
    QTimer.singleShot(0, lambda: name_the_tabs(window))  # once Qt has made the tab
    return True


def name_the_tabs(window: QMainWindow) -> None:
    """Each dock tab's whole name as its tooltip: six tabs in a 398-px column are elided
    ("Slide …", "At…")."""
    from qtpy.QtWidgets import QTabBar

    try:
        bars = window.findChildren(QTabBar)
    except RuntimeError:
        return  # the window was closed first
    for bar in bars:
        for index in range(bar.count()):
            bar.setTabToolTip(index, bar.tabText(index).replace("&&", "&"))


def _short_tab_title(dock: QDockWidget) -> None:
    """The tab shows the widget's name without napari's " (napari-pathviz)": six tabs share a
    column a quarter of the screen wide (napari's title bar keeps the full name)."""
    dock.setWindowTitle(dock.windowTitle().removesuffix(PLUGIN_SUFFIX))


PLUGIN_SUFFIX = " (napari-pathviz)"


# -- the workbench's three columns (the demo's layout, Plugins > PathViz > Workbench) -----------

COLUMN_WIDTH = 360  # each side column at 1440 px: 360 + 720 (the canvas) + 360


def three_columns(window: QMainWindow, explorer, right, napari_docks) -> None:
    """Lays docks out in three columns around the canvas: ``explorer`` on the left, in a tab
    group with napari's ``napari_docks`` (layer controls, layer list), in front; the ``right``
    docks in one tab group on the right, the first in front.

    Why tabs on the left: stacked under napari's two docks the scatter would be a strip, and a
    fourth column would take the canvas' half. The layer list and controls stay one click away
    (their tabs sit under the explorer); File > Window lists every dock."""
    size_before = window.size()  # moving docks stacks them for a moment: the window grows
    for dock in right:
        _move_to(window, dock, "right")
    for dock in right[1:]:
        window.tabifyDockWidget(right[0], dock)
    for dock in (*right, explorer):
        _short_tab_title(dock)
    _move_to(window, explorer, "left")
    window.tabifyDockWidget(napari_docks[0], napari_docks[1])
    window.tabifyDockWidget(napari_docks[1], explorer)
    explorer.raise_()
    right[0].raise_()  # the tab to start from: open a slide
    give_back_height(window, size_before)
    keep_column_widths(window, [explorer, right[0]])
    QTimer.singleShot(0, lambda: name_the_tabs(window))


def _move_to(window: QMainWindow, dock: QDockWidget, area: str) -> None:
    """Docks ``dock`` (not floating, shown) at the end of ``area`` ("left" or "right")."""
    qt_area = _AREAS[area]
    dock.setFloating(False)
    window.removeDockWidget(dock)
    if hasattr(dock, "qt_area"):  # napari's dock keeps its area for its own bookkeeping
        dock.area, dock.qt_area = area, qt_area
    window.addDockWidget(qt_area, dock)
    dock.show()


_AREAS = {
    "left": Qt.DockWidgetArea.LeftDockWidgetArea,
    "right": Qt.DockWidgetArea.RightDockWidgetArea,
}


def keep_column_widths(window: QMainWindow, docks) -> None:
    """Sets the side columns' widths (``docks``: a dock of each, left and right) now and once Qt has laid the docks out (it may undo the
    first)."""
    from qtpy.QtCore import QTimer

    _column_widths(window, docks)
    QTimer.singleShot(0, lambda: _column_widths(window, docks))


def _column_widths(window: QMainWindow, docks) -> None:
    """A quarter of the window each, at most COLUMN_WIDTH; where the right column needs more
    (the Cohort explorer is wider), the left one gives it up: the canvas keeps half."""
    try:
        left, right = docks
        width = min(COLUMN_WIDTH, window.width() // 4)
        right_width = max(width, right.minimumSizeHint().width())
        left_width = min(width, window.width() // 2 - right_width - SPLITTERS)
        window.resizeDocks(docks, [left_width, right_width], Qt.Orientation.Horizontal)
    except RuntimeError:
        pass  # the window was closed first


SPLITTERS = 12  # the two dock separators' width, px


def fit_to_screen(window: QWidget, available=None) -> None:
    """Sizes and places ``window`` (its frame, title bar included) to fill ``available``: by
    default the available geometry of its screen (the screen less task bars and docks). Once
    more when the window manager has framed the window: the frame is not known before."""
    _fit(window, available)
    QTimer.singleShot(FRAMED_AFTER_MS, lambda: _fit(window, available))


FRAMED_AFTER_MS = 500


def _fit(window: QWidget, available) -> None:
    from qtpy.QtGui import QGuiApplication

    try:
        if available is None:
            screen = window.screen() or QGuiApplication.primaryScreen()
            available = screen.availableGeometry()
        frame, inner = window.frameGeometry(), window.geometry()
    except RuntimeError:
        return  # the window was closed first
    extra_width = frame.width() - inner.width()  # the window manager's frame
    extra_height = frame.height() - inner.height()
    window.resize(available.width() - extra_width, available.height() - extra_height)
    window.move(available.topLeft())


def keep_on_screen(window: QWidget) -> None:
    """Shrinks ``window`` (its frame) to its screen's available geometry where it is larger,
    e.g. after docks stacked in it made it grow."""
    from qtpy.QtGui import QGuiApplication

    screen = window.screen() or QGuiApplication.primaryScreen()
    available = screen.availableGeometry()
    frame, inner = window.frameGeometry(), window.geometry()
    width = min(frame.width(), available.width()) - (frame.width() - inner.width())
    height = min(frame.height(), available.height()) - (frame.height() - inner.height())
    if (width, height) != (inner.width(), inner.height()):
        window.layout().activate()
        window.resize(width, height)
